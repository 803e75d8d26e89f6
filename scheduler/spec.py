"""The grid spec: `grid.yaml` -> a validated `GridSpec` -> a list of `TrialConfig`s.

A grid file holds the settings shared by every trial (the keys of
`workers.config.TrialConfig`), a `grid:` section whose axes are lists (their cartesian
product gives the trials), and scheduling settings (`resources:`) that never change a
trial's identity. Every key, unit and default is documented in docs/grid.md.

Bad input is rejected before anything runs with a `SpecError` whose lines name the YAML
path of the field, the value, and what is allowed.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from scheduler.analyses import AnalysisSpec
from scheduler.grid_yaml import Marks, read_yaml, yaml_marks
from scheduler.spec_axes import (  # noqa: F401  (AXIS_PATHS, USER_AXIS_PREFIXES: importable here)
    AXIS_PATHS,
    USER_AXIS_PREFIXES,
    GridAxes,
    Strict,
    nonempty_unique,
)
from scheduler.spec_errors import SpecError, huge_ints, position, problems_of, too_deep
from workers.config import TrialConfig, config_hash_of


class Resources(Strict):
    """What each trial asks Ray for, and how failures are retried (not part of identity)."""

    cpus_per_trial: PositiveFloat = 1.0
    gpus_per_trial: NonNegativeFloat = 0.0  # fractions pack trials onto one GPU
    # "auto": cuda when gpus_per_trial > 0, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Retries of a trial whose worker process died (SIGKILL, node loss).
    max_retries: Annotated[int, Field(ge=0)] = 3
    # Also retry a trial that raised a Python exception (recorded as failed after the last try).
    retry_failed: Annotated[int, Field(ge=0)] = 0
    # Save a resume checkpoint every epoch (resume after a crash from the last epoch).
    resume_checkpoints: bool = True
    # Train trials of one shape (data set, model, batch size, optimizer) together as one
    # vectorized pack per worker (docs/packs.md); gpus_per_trial then sizes a pack's share.
    # "auto": pack the shape groups of >= 2 trials a pack can train, the rest alone;
    # true: pack every trial but data-parallel ones; false: every trial alone.
    pack: bool | Literal["auto"] = "auto"
    # Most trials in one pack; None = automatic (GPU: as many as fit the measured free
    # memory, at most 64; CPU: 8).
    max_pack_size: PositiveInt | None = None
    # Wall-clock limit of one trial (seconds; null: none): past it the trial's worker is
    # killed and the trial recorded `failed`, not retried (scheduler/guards.py). Trials
    # then run alone, not in packs.
    trial_timeout_s: PositiveFloat | None = None


# The settings a grid shares with all its trials: every TrialConfig field but those the
# axes set (`grid:`), with TrialConfig's own types, checks and defaults (never restated).
AXIS_FIELDS = ("batch_size", "lr", "lr_scaling", "warmup_epochs", "seed")
SHARED_FIELDS = tuple(n for n in TrialConfig.model_fields if n not in AXIS_FIELDS)


def trial_fields(names: tuple[str, ...]) -> dict[str, Any]:
    """`create_model` field definitions copying TrialConfig's fields `names`."""
    return {
        n: (TrialConfig.model_fields[n].annotation, copy.copy(TrialConfig.model_fields[n]))
        for n in names
    }


GridFields = create_model(
    "GridFields",
    __base__=Strict,
    __module__=__name__,
    experiment=(str, ...),
    description=(str, ""),
    **trial_fields(SHARED_FIELDS),
    grid=(GridAxes, Field(default_factory=GridAxes)),
    resources=(Resources, Field(default_factory=Resources)),
    # Directory with official data set files (mnist, fashion-mnist, cifar10); relative
    # paths are resolved against the grid file's folder. Not part of trial identity.
    data_dir=(str | None, None),
    # The folder relative user-code paths ("./nets.py:build") are resolved against and that
    # is put on the workers' sys.path: the grid file's folder (set by load_spec; not part
    # of trial identity).
    code_dir=(str | None, None),
    # Loss-landscape analyses run after the trials they need (scheduler/analyses.py).
    analyses=(list[AnalysisSpec], Field(default_factory=list)),
    # The largest grid planned (the product of the axes' lengths, checked before anything is
    # expanded: planning costs ~65 us and ~4 KB per trial). Not part of trial identity.
    max_trials=(PositiveInt, 200_000),
    # The time limit of each call into the user's code by the preflight (a loader, a
    # factory, a loss; seconds): a call still running then fails the preflight, naming its
    # key (scheduler/preflight.py). $BATCHLAB_PREFLIGHT_TIMEOUT_S overrides it. Not identity.
    preflight_timeout_s=(PositiveFloat, 120.0),
)


class GridSpec(GridFields):  # type: ignore[misc,valid-type]
    """A whole grid.yaml: `experiment`, `description`, the settings every trial shares
    (`SHARED_FIELDS`: TrialConfig's, docs/grid.md), the axes (`grid`), `resources` and the
    other scheduling settings (none of them part of a trial's identity)."""

    _trials: list[TrialConfig] | None = PrivateAttr(default=None)

    @field_validator("experiment")
    @classmethod
    def _name(cls, v: str) -> str:
        from warehouse.layout import check_experiment

        return check_experiment(v)

    @field_validator("dataset", "model", "optimizer", mode="before")
    @classmethod
    def _shorthand(cls, v: Any, info: ValidationInfo) -> Any:
        # `dataset: mnist1d` is short for `dataset: {name: mnist1d}`; an import path
        # (`model: "./nets.py:build"`) for `{factory: ...}` / `{loader: ...}`.
        if isinstance(v, str) and ":" in v and info.field_name in ("dataset", "model"):
            return {"loader" if info.field_name == "dataset" else "factory": v}
        return {"name": v} if isinstance(v, str) else v

    def axes(self) -> dict[str, list]:
        """Every axis by name (user axes by their dotted key), in declaration order."""
        d = self.grid.model_dump()
        user = d.pop("user_axes")
        return {**{k: v for k, v in d.items() if v is not None}, **user}

    @property
    def n_trials(self) -> int:
        return math.prod(len(v) for v in self.axes().values())

    def base_config(self) -> dict[str, Any]:
        """The TrialConfig fields shared by every trial, as plain data."""
        d = self.model_dump(
            mode="json",
            exclude={
                "experiment",
                "description",
                "grid",
                "resources",
                "data_dir",
                "analyses",
                "code_dir",
                "max_trials",
                "preflight_timeout_s",
            },
        )
        return d

    def iter_trials(self) -> Iterator[TrialConfig]:
        """Every trial of the grid, in a stable order (axes as declared, values as listed).

        The shared settings are validated once; each axis value was validated by `GridAxes`,
        so trials are derived with `model_copy` (planning 100,000 trials takes seconds).
        The first trial is fully re-validated to catch cross-field conflicts.
        """
        axes = self.axes()
        names = list(axes)
        if self.grid.user_axes:
            yield from self._iter_validated(axes)
            return
        base: TrialConfig | None = None
        for combo in itertools.product(*(axes[n] for n in names)):
            if base is None:
                d = self.base_config()
                for name, value in zip(names, combo, strict=True):
                    *parents, leaf = AXIS_PATHS[name].split(".")
                    target = d
                    for p in parents:
                        target = target[p]
                    target[leaf] = value
                try:
                    base = TrialConfig.model_validate(d)
                except ValidationError as exc:
                    where = ", ".join(f"{n}={v!r}" for n, v in zip(names, combo, strict=True))
                    raise SpecError(problems_of(exc, GridSpec, prefix=f"grid[{where}]")) from None
                base_dump = base.model_dump(mode="json")
                yield base
                continue
            top: dict[str, Any] = {}
            nested: dict[str, dict[str, Any]] = {}
            for name, value in zip(names, combo, strict=True):
                path = AXIS_PATHS[name]
                if "." in path:
                    sub, leaf = path.split(".")
                    nested.setdefault(sub, {})[leaf] = value
                else:
                    top[path] = value
            dump = {**base_dump, **top}
            for sub, upd in nested.items():
                top[sub] = getattr(base, sub).model_copy(update=upd)
                dump[sub] = {**base_dump[sub], **upd}
            yield base.model_copy(update=top).set_hash(config_hash_of(dump))

    def _iter_validated(self, axes: dict[str, list]) -> Iterator[TrialConfig]:
        """Every trial validated in full: grids with user axes (whose values only the
        resolved TrialConfig can check)."""
        names = list(axes)
        for combo in itertools.product(*(axes[n] for n in names)):
            d = self.base_config()
            for name, value in zip(names, combo, strict=True):
                *parents, leaf = AXIS_PATHS.get(name, name).split(".")
                target = d
                for p in parents:
                    target[p] = dict(target.get(p) or {})
                    target = target[p]
                target[leaf] = value
            try:
                yield TrialConfig.model_validate(d)
            except ValidationError as exc:
                where = ", ".join(f"{n}={v!r}" for n, v in zip(names, combo, strict=True))
                raise SpecError(problems_of(exc, GridSpec, prefix=f"grid[{where}]")) from None

    def scaled_lr_problems(self, marks: Marks | None = None, limit: int = 20) -> list[str]:
        """One line per (lr, lr_scaling, batch_size) of the axes whose scaled lr is not
        finite and > 0 (`TrialConfig.scaled_lr_problem`). `iter_trials` derives trials
        with `model_copy`, which skips TrialConfig's validator: this checks every such
        combination at load time, at the cost of the three axes' product only."""
        g = self.grid
        out = []
        for (i, lr), rule, bs in itertools.product(enumerate(g.lr), g.lr_scaling, g.batch_size):
            probe = TrialConfig.model_construct(
                lr=lr, lr_scaling=rule, batch_size=bs, base_batch_size=self.base_batch_size
            )
            if (problem := probe.scaled_lr_problem()) is not None:
                out.append(f"grid.{problem}" + position(marks, ("grid", "lr", i)))
        if len(out) > limit:
            out = [*out[:limit], f"... and {len(out) - limit} more such lr values"]
        return out

    def trials(self) -> list[TrialConfig]:
        """The unique trials: two axis combinations resolving to one config, or to configs
        that train identically (`TrialConfig.canonical`), run once."""
        if self._trials is None:
            seen: dict[str, TrialConfig] = {}
            for t in self.iter_trials():
                t = t.canonical()  # equivalent settings (e.g. linear scaling at base batch) once
                seen.setdefault(t.trial_id, t)
            self._trials = list(seen.values())  # the spec is frozen: expand it once
        return list(self._trials)


def parse_spec(data: Any, source: str = "grid", marks: Marks | None = None) -> GridSpec:
    """Validate already-parsed YAML data into a GridSpec (raises SpecError). With `marks`
    (`yaml_marks` of the text), each problem also says its line and column."""
    if not isinstance(data, Mapping):
        raise SpecError(
            [f"(top level): expected a mapping of keys, got {type(data).__name__}"], source
        )
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(problems_of(exc, GridSpec, marks=marks), source) from None
    if huge := huge_ints(data):
        raise SpecError(huge, source)
    if deep := too_deep(data):
        raise SpecError(deep, source)
    if spec.n_trials > spec.max_trials:
        sizes = " x ".join(f"{k} {len(v)}" for k, v in spec.axes().items())
        raise SpecError(
            [
                f"grid: {spec.n_trials:,} trials ({sizes}) exceed max_trials {spec.max_trials:,}; "
                "set a larger max_trials: in grid.yaml to plan more (about 65 us and 4 KB per "
                "trial)" + position(marks, ("grid",))
            ],
            source,
        )
    if bad_lr := spec.scaled_lr_problems(marks):
        raise SpecError(bad_lr, source)
    # Building every trial validates combinations (e.g. nesterov with adam) up front.
    first = next(spec.iter_trials(), None)
    if first is None:
        raise SpecError(["grid: the grid has no trials"], source)
    return spec


def load_spec(path: str | Path) -> GridSpec:
    """Read and validate a grid.yaml (raises SpecError, never a bare traceback)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError([f"file {str(p)!r} does not exist or is not a file"], str(p))
    try:
        data = read_yaml(p.read_text())  # duplicate keys refused, YAML 1.2 floats
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"malformed YAML{where}: {problem}"], str(p)) from None
    except RecursionError:
        problem = "nesting too deep: lists or mappings nested thousands of levels"
        raise SpecError([problem], str(p)) from None
    except UnicodeDecodeError as exc:
        raise SpecError([f"not a UTF-8 text file ({exc.reason})"], str(p)) from None
    try:
        marks = yaml_marks(p.read_text())
    except (yaml.YAMLError, RecursionError):  # positions are a courtesy: never an error
        marks = {}
    spec = parse_spec(data, str(p), marks)
    if (
        spec.data_dir
        and not Path(spec.data_dir).expanduser().is_absolute()
        and "://" not in spec.data_dir
    ):
        spec = spec.model_copy(update={"data_dir": str((p.parent / spec.data_dir).resolve())})
    if spec.code_dir is None:
        spec = spec.model_copy(update={"code_dir": str(p.parent.resolve())})
    elif not Path(spec.code_dir).expanduser().is_absolute():
        spec = spec.model_copy(update={"code_dir": str((p.parent / spec.code_dir).resolve())})
    return spec
