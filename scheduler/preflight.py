"""Checks of a grid's user code on the driver, before anything is queued (and at --dry-run).

For every distinct import path of the grid (model.factory, dataset.loader, loss, trainable)
the path is imported; for every distinct user data set the loader is called and what it
returned is checked (workers/user_data.py); for every distinct (model, data set, loss) the
model is built and run on two training examples and the loss computed on its outputs. Each
problem is one line naming the grid key, the value and what was expected; `preflight`
raises a SpecError with all of them, so a broken grid fails in seconds, not once per trial
on the cluster. Data-set sizes are checked against `dataset.n_train` and the batch sizes.

It also says when the user's code changed since trials of this experiment were stored (their
ids cover the import paths and kwargs, not the source, so they are kept and skipped).

Runs user code on the driver's CPU: a loader that needs a GPU or a big download is the
user's to make cheap (it receives `device`), or to skip with `--no-preflight`.
"""

from __future__ import annotations

import sys
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


def check_user_code(spec: GridSpec, trials: list[TrialConfig] | None = None) -> list[str]:
    """Every problem of the grid's user code and data-set sizes, one line each."""
    from workers.user import UserCodeError, resolve, use_code_dir

    use_code_dir(spec.code_dir)
    trials = trials if trials is not None else spec.trials()
    problems: list[str] = []
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
        if (up or t.loss != "cross_entropy") and t.trainable is None:
            combos.setdefault((js(t.model), dkey, t.loss, repr(t.loss_kwargs)), t)
    for key, path in paths:
        try:
            resolve(path, key)
        except UserCodeError as exc:
            problems.append(str(exc))
    if problems:
        return problems
    datasets: dict[str, Any] = {}
    for dkey, t in firsts.items():
        try:
            datasets[dkey] = _load(t, spec)
        except Exception as exc:
            problems.append(_line("dataset.loader" if t.dataset.loader else "dataset", t, exc))
    for dkey, bss in sizes.items():
        data = datasets.get(dkey)
        if data is None or data is _UNKNOWN:
            continue
        n = data.n_train
        for bs in sorted(b for b in bss if b > n):
            problems.append(
                f"batch_size: {bs} exceeds the {n} training examples of data set "
                f"{firsts[dkey].dataset.name!r}; allowed: 1 to {n}"
            )
    for (_, dkey, _, _), t in combos.items():
        data = datasets.get(dkey)
        if data is None or data is _UNKNOWN:
            continue
        try:
            _dry_step(t, data)
        except Exception as exc:
            where = "model.factory" if t.model.factory else "loss"
            problems.append(_line(where, t, exc))
    return list(dict.fromkeys(problems))


_UNKNOWN = object()  # a built-in data set whose files are not on this machine


# Training-split sizes of the built-in data sets (docs/datasets.md): checked without loading
# them (or importing torch) on the driver.
BUILTIN_TRAIN = {"mnist1d": 4000, "mnist": 60000, "fashion-mnist": 60000, "cifar10": 50000}
DIGITS = 1797  # scikit-learn's digits, split by val_fraction


class _Sized:
    def __init__(self, n_train: int):
        self.n_train = n_train


def _load(t: TrialConfig, spec: GridSpec):
    ds = t.dataset
    if ds.loader is None:
        n = BUILTIN_TRAIN.get(ds.name)
        if ds.name == "digits":
            n = DIGITS - max(1, round(DIGITS * ds.val_fraction))
        if ds.n_train is not None and n is not None and ds.n_train > n:
            from workers.user import UserCodeError

            raise UserCodeError(
                f"dataset.n_train: {ds.n_train} exceeds the {n} training examples of {ds.name}"
            )
        return _Sized(ds.n_train or n) if n is not None else _UNKNOWN
    from workers.data import load_dataset_cached

    return load_dataset_cached(ds, "cpu", spec.data_dir)


def _dry_step(t: TrialConfig, data) -> None:
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


def _line(key: str, t: TrialConfig, exc: BaseException) -> str:
    from workers.user import UserCodeError

    if isinstance(exc, UserCodeError):
        return str(exc)
    value = {"dataset.loader": t.dataset.loader, "model.factory": t.model.factory}.get(key)
    value = value or t.dataset.name
    text = str(exc).strip().splitlines()
    return f"{key}: {value!r} raised {type(exc).__name__}: {text[-1] if text else ''}"


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


def preflight(spec: GridSpec, root: str | None = None, out: TextIO = sys.stdout) -> None:
    """Raise SpecError with every problem of the grid's user code and data-set sizes; print
    code-change notes."""
    trials = spec.trials()
    problems = check_user_code(spec, trials)
    if problems:
        raise SpecError(problems, "grid")
    if root is not None and any(t.user_paths for t in trials):
        from warehouse.layout import Layout
        from warehouse.store import read_trial_rows

        stored = read_trial_rows(Layout.open(root), spec.experiment, ("user_code_hash",))
        for note in code_changes(spec, trials, stored):
            print(f"note: {note}", file=out)
