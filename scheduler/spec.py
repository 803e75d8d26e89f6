"""The grid spec: `grid.yaml` -> a validated `GridSpec` -> a list of `TrialConfig`s.

A grid file holds the settings shared by every trial (the keys of
`workers.config.TrialConfig`), a `grid:` section whose axes are lists (their cartesian
product gives the trials), and scheduling settings (`resources:`) that never change a
trial's identity. Every key, unit and default is documented in docs/grid.md.

Bad input is rejected before anything runs with a `SpecError` whose lines name the YAML
path of the field, the value, and what is allowed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from scheduler.analyses import AnalysisSpec
from scheduler.grid_yaml import Marks, read_yaml, yaml_marks
from scheduler.spec_errors import SpecError, huge_ints, position, problems_of, too_deep
from workers.config import (
    DatasetConfig,
    EarlyStoppingConfig,
    MeasureConfig,
    ModelConfig,
    OptimizerConfig,
    PerformanceConfig,
    PlateauDecayConfig,
    StopConfig,
    TrialConfig,
    UntilConfig,
    config_hash_of,
)


class _Strict(BaseModel):
    # strict: no coercion ("32" is not an int, true is not 1, "yes" is not a bool).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _nonempty_unique(v: list) -> list:
    if len(v) == 0:
        raise ValueError("an axis needs at least one value")
    if len({repr(x) for x in v}) != len(v):
        raise ValueError(f"values must be unique, got {v}")
    return v


class GridAxes(_Strict):
    """The axes of the grid: each a non-empty list; trials are their cartesian product."""

    batch_size: list[PositiveInt] = Field(default_factory=lambda: [32])
    lr: list[PositiveFloat] = Field(default_factory=lambda: [0.01])
    lr_scaling: list[Literal["none", "linear", "sqrt"]] = Field(default_factory=lambda: ["none"])
    warmup_epochs: list[NonNegativeFloat] = Field(default_factory=lambda: [0.0])
    # Non-negative and 32-bit: larger seeds overflow torch's generator seeding at run time.
    seed: list[Annotated[int, Field(ge=0, lt=2**32)]] = Field(default_factory=lambda: [0])
    momentum: list[Annotated[float, Field(ge=0.0, lt=1.0)]] | None = None
    weight_decay: list[NonNegativeFloat] | None = None
    batchnorm: list[bool] | None = None
    grad_clip_norm: list[PositiveFloat] | None = None
    n_train: list[PositiveInt] | None = None
    data_parallel_workers: list[PositiveInt] | None = None
    loss: list[str] | None = None
    # Axes over the user's own settings, by dotted key: `model.kwargs.<name>`,
    # `dataset.kwargs.<name>`, `loss_kwargs.<name>` and `params.<name>` (docs/custom.md).
    user_axes: dict[str, list[Any]] = Field(default_factory=dict)

    _check = field_validator("*")(
        lambda v: v if v is None or isinstance(v, dict) else _nonempty_unique(v)
    )

    @model_validator(mode="before")
    @classmethod
    def _collect_user_axes(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        v = dict(v)
        given = v.get("user_axes")
        if given is not None and not isinstance(given, Mapping):
            return v  # not a mapping: pydantic's error names grid.user_axes
        user = dict(v.pop("user_axes", None) or {})
        for key in [k for k in v if isinstance(k, str) and "." in k]:
            user[key] = v.pop(key)
        if user:
            v["user_axes"] = user
        return v

    @field_validator("user_axes")
    @classmethod
    def _user_axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            prefix, _, name = key.rpartition(".")
            if prefix not in USER_AXIS_PREFIXES or not name.isidentifier():
                raise ValueError(
                    f"grid.{key}: unknown axis; user settings are axes named "
                    + ", ".join(f"{p}.<name>" for p in USER_AXIS_PREFIXES)
                )
            if not isinstance(values, list):
                raise ValueError(f"grid.{key}: an axis is a list of values, got {values!r}")
            _nonempty_unique(values)
        return v

    @field_validator("lr")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        for x in v:
            if not math.isfinite(x):
                raise ValueError(f"lr must be finite, got {x}")
        return v


USER_AXIS_PREFIXES = ("model.kwargs", "dataset.kwargs", "loss_kwargs", "params")

# Where each axis lands in a TrialConfig (dotted path).
AXIS_PATHS = {
    "batch_size": "batch_size",
    "lr": "lr",
    "lr_scaling": "lr_scaling",
    "warmup_epochs": "warmup_epochs",
    "seed": "seed",
    "momentum": "optimizer.momentum",
    "weight_decay": "optimizer.weight_decay",
    "batchnorm": "model.batchnorm",
    "grad_clip_norm": "grad_clip_norm",
    "n_train": "dataset.n_train",
    "data_parallel_workers": "data_parallel_workers",
    "loss": "loss",
}


class Resources(_Strict):
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


class GridSpec(_Strict):
    """A whole grid.yaml."""

    experiment: str
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    max_epochs: PositiveInt = 20
    early_stopping: EarlyStoppingConfig | None = None
    plateau_decay: PlateauDecayConfig | None = None
    grad_clip_norm: PositiveFloat | None = None
    target_val_error: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    # Budgets besides max_epochs (workers/budget.py): stop: caps, until: train-set targets.
    stop: StopConfig | None = None
    until: UntilConfig | None = None
    divergence_loss: PositiveFloat = 1e4
    data_parallel_workers: PositiveInt = 1
    base_batch_size: PositiveInt = 32
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    # The user's code (docs/custom.md): loss, own training loop, free hyperparameters.
    loss: str = "cross_entropy"
    loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    trainable: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # How the device executes the trials (workers/config.py PerformanceConfig, docs/grid.md).
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    grid: GridAxes = Field(default_factory=GridAxes)
    resources: Resources = Field(default_factory=Resources)
    # Directory with official data set files (mnist, fashion-mnist, cifar10); relative
    # paths are resolved against the grid file's folder. Not part of trial identity.
    data_dir: str | None = None
    # The folder relative user-code paths ("./nets.py:build") are resolved against and that
    # is put on the workers' sys.path: the grid file's folder (set by load_spec; not part
    # of trial identity).
    code_dir: str | None = None
    # Loss-landscape analyses run after the trials they need (scheduler/analyses.py).
    analyses: list[AnalysisSpec] = Field(default_factory=list)
    # The largest grid planned (the product of the axes' lengths, checked before anything is
    # expanded: planning costs ~65 us and ~4 KB per trial). Not part of trial identity.
    max_trials: PositiveInt = 200_000
    # The time limit of each call into the user's code by the preflight (a loader, a factory,
    # a loss; seconds): a call still running then fails the preflight, naming its key
    # (scheduler/preflight.py). $BATCHLAB_PREFLIGHT_TIMEOUT_S overrides it. Not identity.
    preflight_timeout_s: PositiveFloat = 120.0
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
            [f"grid: {spec.n_trials:,} trials ({sizes}) exceed max_trials {spec.max_trials:,}; "
             "set a larger max_trials: in grid.yaml to plan more (about 65 us and 4 KB per "
             "trial)" + position(marks, ("grid",))],
            source,
        )  # fmt: skip
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
