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
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    model_validator,
)

DATASETS = ("mnist1d", "digits", "mnist", "fashion-mnist", "cifar10")
MODELS = ("mlp", "cnn", "lenet", "vgg", "keskar_f1", "keskar_c1")
OPTIMIZERS = ("sgd", "adam")
LR_SCALING = ("none", "linear", "sqrt")


def config_hash_of(dumped: dict[str, Any]) -> str:
    """sha256 of the key-sorted compact JSON of a dumped TrialConfig."""
    return hashlib.sha256(orjson.dumps(dumped, option=orjson.OPT_SORT_KEYS)).hexdigest()


class _Strict(BaseModel):
    """Base: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    name: Literal["mnist1d", "digits", "mnist", "fashion-mnist", "cifar10"] = "mnist1d"
    # Optional cap on training examples (a seeded subset); None = the whole training split.
    n_train: PositiveInt | None = None
    # Fraction of the official training split held out for validation when the data set
    # has no official validation split (mnist1d, digits). The official test split is
    # used as validation for mnist / fashion-mnist / cifar10.
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    # Seed of the train/validation split and of the n_train subset (not the trial seed:
    # every trial of a grid sees the same split).
    split_seed: int = 0


class ModelConfig(_Strict):
    name: Literal["mlp", "cnn", "lenet", "vgg", "keskar_f1", "keskar_c1"] = "mlp"
    # Hidden widths of the MLP (units); ignored by the convolutional models.
    hidden: list[PositiveInt] = Field(default_factory=lambda: [256, 256])
    # BatchNorm after every hidden layer / conv (F-27, F-28). keskar_f1 and keskar_c1 always use it.
    batchnorm: bool = False
    # Dropout probability where the architecture has dropout (lenet: 0.25 / 0.5 as in seed 004).
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    # Channel widths of the VGG-style blocks (each: conv3x3-ReLU-maxpool2).
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128])


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam"] = "sgd"
    # SGD momentum (0 = plain SGD); heavy-ball as in torch.optim.SGD.
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    nesterov: bool = False
    # L2 weight decay added to the gradient (coupled, as torch.optim.SGD / Adam).
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
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


class SharpnessConfig(_Strict):
    eps: list[PositiveFloat] = Field(default_factory=lambda: [1e-3, 5e-4])
    # "lbfgsb": SciPy L-BFGS-B, as Keskar et al.; "pga": projected gradient ascent on the device.
    solver: Literal["lbfgsb", "pga"] = "lbfgsb"
    max_iter: PositiveInt = 10
    # None = full space (A = I); an int p = random Gaussian subspace of that dimension.
    subspace_dim: PositiveInt | None = None
    # Examples of the training set the loss f is evaluated on (a seeded fixed subset).
    n_examples: PositiveInt = 2048


class HessianConfig(_Strict):
    max_iter: PositiveInt = 100
    tol: PositiveFloat = 1e-3
    n_examples: PositiveInt = 2048


class NoiseScaleConfig(_Strict):
    b_small: PositiveInt = 32
    b_big: PositiveInt = 1024
    n_batches: PositiveInt = 20
    # Also compute the exact per-example value when the model is small enough (params).
    exact_max_params: Annotated[int, Field(ge=0)] = 200_000
    exact_n_examples: PositiveInt = 2048


class MeasureConfig(_Strict):
    # Per-step update norms ||theta_{t+1} - theta_t|| and gradient norms (F-9).
    update_norms: bool = True
    # Keep every step's row in the `steps` table (else per-epoch quantiles only).
    store_steps: bool = True
    # Per-layer distance from init at every epoch end (F-7, F-16).
    layers: bool = True
    # Full training set loss/accuracy in eval mode at every epoch end (F-26).
    train_eval: bool = True
    sharpness: SharpnessConfig | None = None
    hessian: HessianConfig | None = None
    noise_scale: NoiseScaleConfig | None = None
    # Also run the enabled probes every N epochs during training (None = at the end only).
    probe_every_epochs: PositiveInt | None = None
    # Save initial and final weights (needed by the landscape analyses).
    checkpoints: bool = True


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
    # Loss above this (or NaN/inf) marks the trial diverged.
    divergence_loss: PositiveFloat = 1e4
    measure: MeasureConfig = Field(default_factory=MeasureConfig)

    @model_validator(mode="after")
    def _check(self) -> TrialConfig:
        if self.optimizer.name == "adam" and self.optimizer.nesterov:
            raise ValueError("optimizer.nesterov applies to sgd only")
        return self

    @property
    def scaled_lr(self) -> float:
        """The lr after the scaling rule (the peak lr, reached after warmup)."""
        k = self.batch_size / self.base_batch_size
        if self.lr_scaling == "linear":
            return self.lr * k
        if self.lr_scaling == "sqrt":
            return self.lr * k**0.5
        return self.lr

    # Cache of config_hash; a fresh copy (model_copy) must reset it (see set_hash).
    _hash: str | None = PrivateAttr(default=None)

    def set_hash(self, config_hash: str | None) -> TrialConfig:
        """Seed the hash cache (the grid planner computes hashes in bulk)."""
        self._hash = config_hash
        return self

    def canonical_json(self) -> str:
        """Key-sorted JSON of every field, defaults included: the input of the hash."""
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
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
