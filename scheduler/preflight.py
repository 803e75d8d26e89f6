"""Checks of a grid's user code on the driver, before anything is queued (and at --dry-run).

For every distinct import path of the grid (model.factory, dataset.loader, loss, trainable)
the path is imported; for every distinct user data set the loader is called and what it
returned is checked (workers/user_data.py); for every distinct (model, data set, loss) the
model is built and run on two training examples and the loss computed on its outputs. Each
problem is one line naming the grid key, the value and what was expected; `preflight`
raises a SpecError with all of them, so a broken grid fails in seconds, not once per trial
on the cluster. Data-set sizes are checked against `dataset.n_train` and the batch sizes.

Built-in data sets are known by a table of their sizes and shapes (`BUILTIN`), so they need
no loading unless user code (or a loss other than cross_entropy) must be run on them; then
the two examples are real when the files are on this machine (mnist1d and digits always
are), else a random batch of the right shape, and a note says so (the workers read or
download the files when the trials run).

User code runs in a box: a child process (scheduler/preflight_box.py) in which every call
into it (import, loader, factory, forward, loss) has `preflight_timeout_s` (or
$BATCHLAB_PREFLIGHT_TIMEOUT_S) seconds; a call that hangs, calls sys.exit, raises
KeyboardInterrupt or kills its process is one problem line naming its key. Grids without
user code are checked in this process.

It also says when the user's code changed since trials of this experiment were stored (their
ids cover the import paths and kwargs, not the source, so they are kept and skipped).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from scheduler.spec import GridSpec, SpecError
from workers.config import TrialConfig


class _Json:
    """model_dump_json of sub-configs, once per object (a grid's trials share them)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, str]] = {}

    def __call__(self, obj: Any) -> str:
        hit = self._by_id.get(id(obj))
        if hit is None or hit[0] is not obj:
            hit = (obj, obj.model_dump_json())
            self._by_id[id(obj)] = hit
        return hit[1]


@dataclass
class Checks:
    """What the preflight found: problems (the grid must not run) and notes (said, not fatal)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Stage = Callable[[str, str], None]  # (key, value) of the user code about to be called


def _no_stage(key: str, value: str) -> None:
    pass


def timeout_of(spec: GridSpec) -> float:
    """The per-call limit of the boxed preflight, seconds ($BATCHLAB_PREFLIGHT_TIMEOUT_S wins)."""
    env = os.environ.get("BATCHLAB_PREFLIGHT_TIMEOUT_S")
    if env:
        try:
            value = float(env)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise SpecError(
                [f"$BATCHLAB_PREFLIGHT_TIMEOUT_S: {env!r} is not allowed: a number of seconds > 0"]
            )
        return value
    return spec.preflight_timeout_s


def run_checks(
    spec: GridSpec, trials: list[TrialConfig] | None = None, timeout_s: float | None = None
) -> Checks:
    """Every problem (and note) of the grid's user code and data-set sizes. With user code,
    in a child process with a time limit per call (scheduler/preflight_box.py)."""
    from workers.user import use_code_dir

    use_code_dir(spec.code_dir)  # here too: provenance (code_changes) resolves the paths
    trials = trials if trials is not None else spec.trials()
    if not any(t.user_paths for t in trials):
        return check_here(spec, trials)
    from scheduler.preflight_box import run_boxed

    return Checks(**run_boxed(spec, timeout_s if timeout_s is not None else timeout_of(spec)))


def check_user_code(spec: GridSpec, trials: list[TrialConfig] | None = None) -> list[str]:
    """Every problem of the grid's user code and data-set sizes, one line each."""
    return run_checks(spec, trials).problems


def check_here(
    spec: GridSpec, trials: list[TrialConfig] | None = None, stage: Stage = _no_stage
) -> Checks:
    """The checks, in this process; `stage(key, value)` is called before each call into user
    code (the box's child reports it, so a hang is named)."""
    from workers.user import UserCodeError, resolve, use_code_dir

    use_code_dir(spec.code_dir)
    trials = trials if trials is not None else spec.trials()
    out = Checks()
    problems = out.problems
    # One pass: distinct user paths, data sets (with their batch sizes) and, for user code,
    # distinct (model, data set, loss) combinations. Sub-configs are shared between the
    # trials of a grid, so `js` costs one dump per distinct object (100,000 trials: ~1 s).
    js = _Json()
    paths: dict[tuple[str, str], None] = {}
    firsts: dict[str, TrialConfig] = {}
    sizes: dict[str, set[int]] = {}
    combos: dict[tuple, TrialConfig] = {}
    for t in trials:
        dkey = js(t.dataset)
        firsts.setdefault(dkey, t)
        sizes.setdefault(dkey, set()).add(t.batch_size)
        up = t.user_paths
        for kv in up.items():
            paths[kv] = None
        if _steps(t):
            combos.setdefault((js(t.model), dkey, t.loss, repr(t.loss_kwargs)), t)
    for key, path in paths:
        stage(key, path)
        try:
            resolve(path, key)
        except UserCodeError as exc:
            problems.append(str(exc))
        except BaseException as exc:  # user code: SystemExit, interrupts too
            problems.append(_line(key, path, exc, "importing it"))
    if problems:
        return out
    stepped = {c[1] for c in combos}
    datasets: dict[str, Any] = {}
    for dkey, t in firsts.items():
        where = "dataset.loader" if t.dataset.loader else "dataset"
        stage(where, t.dataset.loader or t.dataset.name)
        try:
            datasets[dkey] = _load(t, spec, dkey in stepped, out.notes)
        except BaseException as exc:  # user code: SystemExit, interrupts too
            problems.append(_line(where, t.dataset.loader or t.dataset.name, exc))
    for dkey, bss in sizes.items():
        n = getattr(datasets.get(dkey), "n_train", None)
        if n is None:
            continue
        for bs in sorted(b for b in bss if b > n):
            problems.append(
                f"batch_size: {bs} exceeds the {n} training examples of data set "
                f"{firsts[dkey].dataset.name!r}; allowed: 1 to {n}"
            )
    for (_, dkey, _, _), t in combos.items():
        data = datasets.get(dkey)
        if not hasattr(data, "x_train"):
            continue
        key = "model.factory" if t.model.factory else "loss"
        stage(key, t.model.factory or t.loss)
        try:
            _dry_step(t, data, stage)
        except BaseException as exc:  # user code: SystemExit, interrupts too
            problems.append(_line(key, t.model.factory or t.loss, exc))
    out.problems = list(dict.fromkeys(problems))
    out.notes = list(dict.fromkeys(out.notes))
    return out


def _steps(t: TrialConfig) -> bool:
    """Whether the dry step runs for `t`: a user factory or a loss other than the default
    (a user loop reaches them by trial.build_model() / trial.loss), or a user data set under
    batchlab's loop. A user loop with the default model and loss may train anything: its
    data set is loaded and checked, nothing is run on it."""
    user_data = t.dataset.loader is not None and t.trainable is None
    return bool(t.model.factory) or t.loss != "cross_entropy" or user_data


# The built-in data sets without loading them (docs/datasets.md): training examples, one
# example's shape, classes. digits is split by val_fraction (1,797 examples).
BUILTIN: dict[str, tuple[int, tuple[int, ...], int]] = {
    "mnist1d": (4000, (40,), 10),
    "digits": (1797, (1, 8, 8), 10),
    "mnist": (60000, (1, 28, 28), 10),
    "fashion-mnist": (60000, (1, 28, 28), 10),
    "cifar10": (50000, (3, 32, 32), 10),
}
GENERATED = ("mnist1d", "digits")  # no files to look for: always real examples


@dataclass
class _Sized:
    """A built-in data set nothing has to run on: its training-set size only."""

    n_train: int


def builtin_size(name: str, val_fraction: float) -> int:
    """Training examples of a built-in data set (digits: after the val_fraction split)."""
    n = BUILTIN[name][0]
    return n - max(1, round(n * val_fraction)) if name == "digits" else n


def _load(t: TrialConfig, spec: GridSpec, needed: bool, notes: list[str]) -> Any:
    """The data set of `t`: loaded when `needed` (user code runs on it), else its size."""
    from workers.user import UserCodeError

    ds = t.dataset
    if ds.loader is not None:
        from workers.data import load_dataset_cached

        data = load_dataset_cached(ds, "cpu", spec.data_dir)
        if data.source.get("warning"):
            notes.append(f"warning: {data.source['warning']}")
        return data
    if ds.name not in BUILTIN:
        raise UserCodeError(f"dataset.name: {ds.name!r} is not a built-in data set")
    n = builtin_size(ds.name, ds.val_fraction)
    if ds.n_train is not None and ds.n_train > n:
        raise UserCodeError(
            f"dataset.n_train: {ds.n_train} exceeds the {n} training examples of {ds.name}"
        )
    if not needed:
        return _Sized(ds.n_train or n)
    from workers.data import load_dataset
    from workers.downloads import DownloadError, resolve_dir

    if ds.name in GENERATED:
        return load_dataset(ds, "cpu", spec.data_dir)
    try:
        return load_dataset(ds, "cpu", spec.data_dir, download=False)
    except DownloadError:
        pass
    data = random_batch(ds.name, ds.n_train or n)
    notes.append(
        f"dataset {ds.name!r}: its files are not on this machine (looked in "
        f"{resolve_dir(ds.name, spec.data_dir)}): the user code was checked on a random batch "
        f"of the data set's shape {tuple(data.x_train.shape)}, labels in "
        f"[0, {data.num_classes}) (shape only, not real examples; the workers read or "
        "download the files when the trials run, docs/datasets.md)"
    )
    return data


def random_batch(name: str, n_train: int) -> Any:
    """A Dataset of two random examples of built-in data set `name`'s shape (its files are
    not here), seeded; `n_train` is the real data set's size."""
    import torch

    from workers.data import Dataset

    _, shape, classes = BUILTIN[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=g)
    y = torch.randint(0, classes, (2,), generator=g)
    data = Dataset(
        name=name,
        x_train=x,
        y_train=y,
        x_val=x,
        y_val=y,
        num_classes=classes,
        input_shape=shape,
        source={"shape_only": True},
    )
    return _Shaped(data, n_train)


class _Shaped:
    """A Dataset of a random batch that reports the real data set's training-set size."""

    def __init__(self, data: Any, n_train: int):
        self.data, self.n_train = data, n_train

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)


def _dry_step(t: TrialConfig, data: Any, stage: Stage = _no_stage) -> None:
    """Build the model, forward two training examples, compute the loss (and its backward)."""
    import torch

    from workers.losses import loss_of
    from workers.models import build_model
    from workers.user import UserCodeError

    torch.manual_seed(t.seed)
    model = build_model(t.model, data.input_shape, data.num_classes)
    x, y = data.x_train[:2], data.y_train[:2]
    model.train()
    try:
        out = model(x)
    except Exception as exc:
        raise UserCodeError(
            f"model.factory: {t.model.factory!r}: the model's forward failed on a batch of shape "
            f"{tuple(x.shape)} from the data set: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise UserCodeError(
            f"model.factory: {t.model.factory!r}: forward returned a {type(out).__name__}; "
            "expected a tensor of outputs"
        )
    lossf = loss_of(t)
    class_ids = lossf.name == "cross_entropy" and not torch.is_floating_point(y)
    if class_ids and (out.dim() != 2 or out.shape[1] < data.num_classes):
        raise UserCodeError(
            f"model.factory: {t.model.factory or t.model.name!r} returns outputs of shape "
            f"{tuple(out.shape)} for a batch of {tuple(x.shape)}; loss cross_entropy needs "
            f"(2, {data.num_classes}) (num_classes={data.num_classes})"
        )
    stage("loss", t.loss)
    try:
        loss = lossf(out, y)
    except Exception as exc:
        raise UserCodeError(
            f"loss: {t.loss!r} failed on outputs {tuple(out.shape)} and targets {tuple(y.shape)} "
            f"({y.dtype}): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise UserCodeError(
            f"loss: {t.loss!r} returned {shape}; expected the batch mean as a scalar tensor"
        )
    loss.backward()


def _line(key: str, value: str, exc: BaseException, doing: str = "") -> str:
    """One problem line for an exception out of user code: its own message for a
    UserCodeError, else what was raised (an exit or an interrupt said as such)."""
    from workers.user import UserCodeError

    if isinstance(exc, UserCodeError):
        return str(exc)
    when = f" {doing}" if doing else ""
    if isinstance(exc, SystemExit):
        return (
            f"{key}: {value!r} called sys.exit({exc.code!r}){when}; user code must return "
            "(or raise) for batchlab to go on"
        )
    if isinstance(exc, KeyboardInterrupt):
        return f"{key}: {value!r} raised KeyboardInterrupt{when}"
    text = str(exc).strip().splitlines()
    return f"{key}: {value!r} raised {type(exc).__name__}{when}: {text[-1] if text else ''}"


def code_changes(spec: GridSpec, trials: list[TrialConfig], stored: list[dict]) -> list[str]:
    """Notes on stored trials of this grid whose user code differs from the code now."""
    from scheduler.tasks import user_code_info

    by_id = {r["trial_id"]: r for r in stored}
    changed: dict[str, list[str]] = {}
    current: dict[str, dict[str, str]] = {}
    for t in trials:
        r = by_id.get(t.trial_id)
        if r is None or not t.user_paths or r.get("user_code_hash") in (None, ""):
            continue
        key = repr(sorted(t.user_paths.items()))
        if key not in current:
            current[key] = user_code_info(t)
        if current[key]["hash"] and r["user_code_hash"] != current[key]["hash"]:
            changed.setdefault(current[key]["version"], []).append(t.trial_id)
    return [
        f"user code changed since {len(ids)} stored trial(s) of experiment {spec.experiment!r} "
        f"ran (now: {version}); they are kept and skipped (a trial's id covers its import paths "
        "and kwargs, not the source): use a new experiment name to run the changed code"
        for version, ids in changed.items()
    ]


def preflight(spec: GridSpec, root: str | None = None, out: TextIO | None = None) -> None:
    """Raise SpecError with every problem of the grid's user code and data-set sizes; print
    the notes (shape-only checks, warnings) and code-change notes to `out` (stdout)."""
    out = out if out is not None else sys.stdout
    trials = spec.trials()
    checks = run_checks(spec, trials)
    for note in checks.notes:
        print(note if note.startswith("warning: ") else f"note: {note}", file=out)
    if checks.problems:
        raise SpecError(checks.problems, "grid")
    if root is not None and any(t.user_paths for t in trials):
        from warehouse.layout import Layout
        from warehouse.store import read_trial_rows

        stored = read_trial_rows(Layout.open(root), spec.experiment, ("user_code_hash",))
        for note in code_changes(spec, trials, stored):
            print(f"note: {note}", file=out)


if __name__ == "__main__":  # the box's child process (scheduler/preflight_box.py)
    from scheduler.preflight_box import serve

    serve(lambda spec, stage: check_here(spec, stage=stage))
