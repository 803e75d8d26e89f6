"""The resolved configuration of one trial: the contract between scheduler and worker.

Everything that changes a trial's results lives here, with its unit and default, and
nothing else does: resources, experiment name and storage location are the scheduler's
business and are not part of a trial's identity. The scheduler expands a grid into
`TrialConfig`s (see `scheduler/spec.py`); the worker trains exactly one of them.

Pure pydantic, no torch, so the scheduler and the app can import it cheaply.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from workers.config_base import IMPORT_PATH, StrictConfig, check_import_path, jsonable
from workers.identity import config_hash_of, identity_dump
from workers.measure_config import (
    HessianConfig,
    MeasureConfig,
    NoiseScaleConfig,
    SharpnessConfig,
)
from workers.probe_settings import AdaptiveSharpnessConfig, BatchSharpnessConfig

# Importers have always reached these names here (re-exported after the split: the identity
# in workers/identity.py, the `measure:` models in workers/measure_config.py).
__all__ = [
    "COMPILE_MODES",
    "DATASETS",
    "LOSSES",
    "LR_SCALING",
    "MODELS",
    "OPTIMIZERS",
    "AdaptiveSharpnessConfig",
    "BatchSharpnessConfig",
    "DatasetConfig",
    "EarlyStoppingConfig",
    "HessianConfig",
    "MeasureConfig",
    "ModelConfig",
    "NoiseScaleConfig",
    "OptimizerConfig",
    "PerformanceConfig",
    "PlateauDecayConfig",
    "SharpnessConfig",
    "StopConfig",
    "TrialConfig",
    "UntilConfig",
    "check_import_path",
    "config_hash_of",
    "identity_dump",
]

DATASETS = ("mnist1d", "digits", "mnist", "fashion-mnist", "cifar10")
MODELS = ("mlp", "cnn", "lenet", "vgg", "keskar_f1", "keskar_c1")
OPTIMIZERS = ("sgd", "adam")
LR_SCALING = ("none", "linear", "sqrt")
LOSSES = ("cross_entropy", "bce", "mse")

_IMPORT_PATH = IMPORT_PATH
_jsonable = jsonable
_Strict = StrictConfig  # the base of every config model (workers/config_base.py)


class DatasetConfig(_Strict):
    # The user's data set: "package.module:function" or "./file.py:function", called with
    # `kwargs` (docs/custom.md). None = the built-in data set `name`.
    loader: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # A built-in data set, or (with `loader`) the label of the user's data set.
    name: str = "mnist1d"
    # Optional cap on training examples (a seeded subset); None = the whole training split.
    n_train: PositiveInt | None = None
    # Fraction of the official training split held out for validation when the data set
    # has no official validation split (mnist1d, digits). The official test split is
    # used as validation for mnist / fashion-mnist / cifar10.
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    # Seed of the train/validation split and of the n_train subset (not the trial seed:
    # every trial of a grid sees the same split).
    split_seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _label(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("loader") and "name" not in v:
            v = {**v, "name": _label_of(v["loader"])}
        return v

    _loader = field_validator("loader")(lambda v: check_import_path(v, "dataset.loader"))
    _kwargs = field_validator("kwargs")(lambda v: _jsonable(v, "dataset.kwargs"))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str, info: ValidationInfo) -> str:
        return _builtin_or_user(v, info.data.get("loader"), DATASETS, "data set", "dataset.loader")


def _builtin_or_user(
    name: str, user: str | None, builtins: tuple[str, ...], what: str, key: str
) -> str:
    if user is None and name not in builtins:
        raise ValueError(
            f"not a built-in {what}: allowed {', '.join(map(repr, builtins))}; for your own "
            f"{what} give {key}: 'package.module:function' (docs/custom.md)"
        )
    return name


def _label_of(path: str) -> str:
    """A readable default name for user code: the function's name."""
    return str(path).rsplit(":", 1)[-1]


class ModelConfig(_Strict):
    # The user's model: "package.module:function" or "./file.py:function" returning an
    # nn.Module, called with `kwargs` (+ input_shape / num_classes when it accepts them).
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # A built-in model, or (with `factory`) the label of the user's model.
    name: str = "mlp"
    # Hidden widths of the MLP (units); ignored by the convolutional models.
    hidden: list[PositiveInt] = Field(default_factory=lambda: [256, 256])
    # BatchNorm after every hidden layer / conv (F-27, F-28). keskar_f1 and keskar_c1 always use it.
    batchnorm: bool = False
    # Dropout probability where the architecture has dropout (lenet: 0.25 / 0.5 as in seed 004).
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    # Channel widths of the VGG-style blocks (each: conv3x3-ReLU-maxpool2).
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128])

    @model_validator(mode="before")
    @classmethod
    def _label(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("factory") and "name" not in v:
            v = {**v, "name": _label_of(v["factory"])}
        return v

    _factory = field_validator("factory")(lambda v: check_import_path(v, "model.factory"))
    _kwargs = field_validator("kwargs")(lambda v: _jsonable(v, "model.kwargs"))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str, info: ValidationInfo) -> str:
        return _builtin_or_user(v, info.data.get("factory"), MODELS, "model", "model.factory")


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam"] = "sgd"
    # SGD momentum (0 = plain SGD); heavy-ball as in torch.optim.SGD.
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    nesterov: bool = False
    # L2 weight decay added to the gradient (coupled, as torch.optim.SGD / Adam).
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    @field_validator("betas", mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v  # YAML and JSON give lists

    eps: PositiveFloat = 1e-8


class EarlyStoppingConfig(_Strict):
    # Stop when validation loss has not improved by more than min_delta for `patience` units.
    patience: PositiveInt = 10
    # "epochs": validate once per epoch, patience counted in epochs.
    # "steps": validate every `eval_every_steps` optimizer steps, patience counted in steps
    # (the seed-002 article: "has not improved for 100 iterations").
    unit: Literal["epochs", "steps"] = "epochs"
    eval_every_steps: PositiveInt = 100
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0


class PlateauDecayConfig(_Strict):
    # Step decay on plateau (F-24): lr *= factor when validation loss has not improved for
    # `patience` epochs; at most `max_decays` times.
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    patience: PositiveInt = 5
    max_decays: Annotated[int, Field(ge=0)] = 3


class StopConfig(_Strict):
    """Budget caps besides max_epochs (any that is set stops the trial when reached, in
    the middle of an epoch for steps / examples / time): the stop_reason names it."""

    # Optimizer steps (stop_reason "max_steps").
    max_steps: PositiveInt | None = None
    # Training examples seen, a partial last batch counted by its size ("max_examples").
    max_examples: PositiveInt | None = None
    # Training time in seconds, the steps only (evaluations and probes not counted;
    # "max_time"). Not reproducible across machines: a cap, not a protocol.
    max_time_s: PositiveFloat | None = None

    @model_validator(mode="after")
    def _some(self) -> StopConfig:
        if self.max_steps is None and self.max_examples is None and self.max_time_s is None:
            raise ValueError("give at least one of max_steps, max_examples, max_time_s")
        return self


class UntilConfig(_Strict):
    """Train until the training set is fitted (the Keskar protocol), judged at every epoch
    end on the full train-set evaluation (train_loss_eval / train_acc_eval, eval mode);
    max_epochs stays the cap. stop_reason "train_target_reached"."""

    # Stop at the first epoch whose train_loss_eval < this.
    train_loss_below: PositiveFloat | None = None
    # Stop at the first epoch whose train_acc_eval >= this (0 < x <= 1).
    train_acc_above: Annotated[float, Field(gt=0.0, le=1.0)] | None = None

    @model_validator(mode="after")
    def _some(self) -> UntilConfig:
        if self.train_loss_below is None and self.train_acc_above is None:
            raise ValueError("give train_loss_below and/or train_acc_above")
        return self


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class PerformanceConfig(_Strict):
    """How the device executes a trial (workers/perf.py applies it; docs/grid.md,
    `performance`). Every default leaves torch as it is: a trial without this section trains
    bit-identically to one from before it existed. Each switch has a CPU fallback, and what
    was in effect is recorded in the trial's `perf_json`."""

    # TF32 tensor cores for fp32 matmuls and cuDNN convolutions (CUDA, Ampere and later):
    # inputs rounded to 10-bit mantissas. None = torch's defaults untouched (matmuls full
    # fp32, cuDNN convolutions TF32); true = both TF32; false = both full fp32. Part of the
    # trial id when set (it changes the numerics). No effect on CPU.
    tf32: bool | None = None
    # torch.compile the training forward (and so its backward): false, true (mode "default")
    # or a mode name. Falls back to eager, with the reason recorded, when compiling fails.
    compile: bool | str = False
    # NHWC memory format for models with Conv2d layers (weights and input batches); a
    # recorded no-op for MLPs and 1-D convolutions.
    channels_last: bool = False
    # Capture the lone trial's full-batch forward + backward in CUDA graphs (static shapes;
    # the last partial batch runs eagerly). CUDA only: a recorded no-op on CPU.
    cuda_graphs: bool = False
    # torch.backends.cudnn.benchmark: let cuDNN time its algorithms per input shape (CUDA).
    cudnn_benchmark: bool = False

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, v: Any) -> Any:
        if isinstance(v, bool) or v in COMPILE_MODES:
            return v
        raise ValueError(
            f"{v!r} is not allowed: false, true or a torch.compile mode "
            f"({', '.join(map(repr, COMPILE_MODES))})"
        )

    @property
    def is_default(self) -> bool:
        return self == PerformanceConfig()


class TrialConfig(_Strict):
    """One fully resolved trial. Its hash is the trial's identity."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    batch_size: PositiveInt = 32
    # The lr given in the grid, before scaling (the "base lr" at base_batch_size).
    lr: PositiveFloat = 0.01
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    base_batch_size: PositiveInt = 32
    # Gradual linear warmup (Goyal et al.) from lr to the scaled lr, in epochs (0 = none).
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 0.0
    seed: int = 0
    max_epochs: PositiveInt = 20
    early_stopping: EarlyStoppingConfig | None = None
    plateau_decay: PlateauDecayConfig | None = None
    # Clip the global gradient norm to this value (F-25); None = no clipping.
    grad_clip_norm: PositiveFloat | None = None
    # Stop at the first validation where the error (1 - accuracy) <= target (steps-to-target).
    target_val_error: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    # Data-parallel workers (DistributedDataParallel through Ray Train); `batch_size` is the
    # global batch, split evenly across workers (as the seed study's MirroredStrategy).
    data_parallel_workers: PositiveInt = 1
    # Budget caps besides max_epochs: max_steps / max_examples / max_time_s (StopConfig).
    stop: StopConfig | None = None
    # Train until the training set is fitted (train_loss_below / train_acc_above), with
    # max_epochs as the cap (UntilConfig).
    until: UntilConfig | None = None
    # Loss above this (or NaN/inf) marks the trial diverged.
    divergence_loss: PositiveFloat = 1e4
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    # The training loss, used by training, evaluation and every probe: a built-in
    # (cross_entropy | bce | mse) or "package.module:function" / "./file.py:function"
    # taking (outputs, targets) and returning the batch mean (docs/custom.md).
    loss: str = "cross_entropy"
    # Keyword arguments of the loss (e.g. label_smoothing for cross_entropy).
    loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    # The user's own training loop: "package.module:function" / "./file.py:function",
    # called with the running trial (`batchlab.trial`); None = batchlab's loop.
    trainable: str | None = None
    # Hyperparameters batchlab does not know: passed to the user's code as trial.params
    # (grid axes `params.<name>`), part of the trial's identity.
    params: dict[str, Any] = Field(default_factory=dict)
    # How the device executes the trial: TF32, torch.compile, channels_last, CUDA graphs,
    # cuDNN autotuning (PerformanceConfig). Only `tf32` is part of the trial's identity.
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)

    @model_validator(mode="after")
    def _check(self) -> TrialConfig:
        if (problem := self.scaled_lr_problem()) is not None:
            raise ValueError(problem)
        if self.optimizer.name == "adam" and self.optimizer.nesterov:
            raise ValueError("optimizer.nesterov applies to sgd only")
        if self.trainable is not None and self.data_parallel_workers > 1:
            raise ValueError(
                "data_parallel_workers > 1 runs batchlab's own loop through Ray Train; a "
                "trainable (your own loop) runs in one worker: set data_parallel_workers: 1"
            )
        if self.trainable is not None and "best" in self.measure.at:
            raise ValueError(
                "measure.at: best keeps the best-validation weights of batchlab's loop; with "
                "a trainable, call trial.measure(model) on your best model yourself"
            )
        if (
            self.stop is not None
            and self.stop.max_time_s is not None
            and self.data_parallel_workers > 1
        ):
            raise ValueError(
                "stop.max_time_s: each data-parallel rank times itself, so the ranks would "
                "stop at different steps; cap data-parallel trials by max_steps or max_examples"
            )
        if self.until is not None and not self.measure.train_eval and self.trainable is None:
            raise ValueError(
                "until: is judged on the full train-set evaluation of every epoch; "
                "set measure.train_eval: true"
            )
        return self

    @property
    def unpackable_reason(self) -> str | None:
        """Why a pack cannot train this trial's budget (stop:, until:, measure.at best),
        or None."""
        keys = [
            k
            for k, on in (
                ("stop", self.stop is not None),
                ("until", self.until is not None),
                ("measure.at: best", "best" in self.measure.at),
            )
            if on
        ]
        if not keys:
            return None
        return (
            f"{', '.join(keys)}: packs train every member to max_epochs and probe the final "
            "weights; these trials train alone"
        )

    _trainable = field_validator("trainable")(lambda v: check_import_path(v, "trainable"))
    _params = field_validator("params", "loss_kwargs")(lambda v: _jsonable(v, "params"))

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        if v not in LOSSES and not (isinstance(v, str) and _IMPORT_PATH.fullmatch(v)):
            raise ValueError(
                f"a built-in loss ({', '.join(map(repr, LOSSES))}) or "
                "'package.module:function' / './file.py:function'"
            )
        return v

    @property
    def user_paths(self) -> dict[str, str]:
        """The user code this trial runs, by grid key (empty for a built-in trial)."""
        out = {
            "model.factory": self.model.factory,
            "dataset.loader": self.dataset.loader,
            "trainable": self.trainable,
            "loss": self.loss if self.loss not in LOSSES else None,
        }
        return {k: v for k, v in out.items() if v}

    def canonical(self) -> TrialConfig:
        """The trial this config trains as, written one way: at batch_size ==
        base_batch_size every lr_scaling rule gives the unscaled lr (-> "none"), and a
        warmup from lr to a scaled lr equal to lr is no warmup (-> 0). Configs that train
        identically thus share one trial id, and the grid runs it once."""
        upd: dict[str, Any] = {}
        same_lr = self.lr_scaling == "none" or self.batch_size == self.base_batch_size
        if self.lr_scaling != "none" and self.batch_size == self.base_batch_size:
            upd["lr_scaling"] = "none"
        if self.warmup_epochs > 0 and same_lr:
            upd["warmup_epochs"] = 0.0
        if not upd:
            return self
        return TrialConfig.model_validate({**self.model_dump(mode="json"), **upd})

    @property
    def scaled_lr(self) -> float:
        """The lr after the scaling rule (the peak lr, reached after warmup)."""
        k = self.batch_size / self.base_batch_size
        if self.lr_scaling == "linear":
            return self.lr * k
        if self.lr_scaling == "sqrt":
            return self.lr * k**0.5
        return self.lr

    def scaled_lr_problem(self) -> str | None:
        """Why the lr after the scaling rule cannot train (not finite, or not > 0: e.g.
        lr: 1e308 under linear scaling is inf), or None. A non-finite lr would end the
        trial as `diverged`, a finding about the lr, when the input is what is wrong."""
        scaled = self.scaled_lr
        if math.isfinite(scaled) and scaled > 0:
            return None
        return (
            f"lr: {self.lr!r} scaled by lr_scaling {self.lr_scaling!r} (batch_size "
            f"{self.batch_size} / base_batch_size {self.base_batch_size}) is {scaled!r}; the "
            "scaled lr must be finite and > 0"
        )

    def check_scaled_lr(self) -> None:
        """Raise ValueError when `scaled_lr_problem` finds one (the workers call it: a
        config derived with model_copy skips the validator)."""
        if (problem := self.scaled_lr_problem()) is not None:
            raise ValueError(problem)

    # Cache of config_hash; a fresh copy (model_copy) must reset it (see set_hash).
    _hash: str | None = PrivateAttr(default=None)

    def set_hash(self, config_hash: str | None) -> TrialConfig:
        """Seed the hash cache (the grid planner computes hashes in bulk)."""
        self._hash = config_hash
        return self

    def canonical_json(self) -> str:
        """Key-sorted JSON of every field, defaults included (the hash reads the identity
        dump of it: `identity_dump`)."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS).decode()

    @property
    def config_hash(self) -> str:
        if self._hash is None:
            self._hash = config_hash_of(self.model_dump(mode="json"))
        return self._hash

    @property
    def trial_id(self) -> str:
        """Stable identity: 16 hex digits of the config hash (not the grid position)."""
        return self.config_hash[:16]

    def shape_key(self) -> str:
        """Settings that fix tensor shapes: trials sharing it can be trained as one pack."""
        key: dict[str, Any] = {
            "dataset": self.dataset.model_dump(mode="json"),
            "model": self.model.model_dump(mode="json"),
            "batch_size": self.batch_size,
            "optimizer": self.optimizer.name,
            "loss": [self.loss, self.loss_kwargs],
            "trainable": self.trainable,
        }
        # Members of a pack share one execution (global TF32 flags, one memory format): the
        # settings split packs, and leave the shape keys of default trials as they were.
        if not self.performance.is_default:
            key["performance"] = self.performance.model_dump(mode="json")
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
