"""The running trial, as the user's own training loop sees it (`trainable:` in grid.yaml).

`run_user_trial` calls the user's function inside the worker with a `Trial` (as its only
argument when it takes one; `from batchlab import trial` reaches the same object). The
function trains however it likes and reports through a small API:

- `trial.config` (the TrialConfig), `trial.params` (free hyperparameters), `trial.device`,
  `trial.batch_size`, `trial.lr` (after the scaling rule), `trial.max_epochs`, `trial.seed`;
- `trial.data` (the configured data set on the device), `trial.loss` (the configured loss),
  `trial.build_model()` (the configured model, seeded, on the device, and watched);
- `trial.watch(model)`: batchlab measures this model (distance from init per epoch and per
  layer, update and gradient norms per logged step, probes at the end, init/final weights);
- `trial.log_step(loss=..., lr=..., **extra)` after an optimizer step (optional);
- `trial.log_epoch(epoch, train_loss=..., val_loss=..., val_acc=..., **extra)` at each
  epoch end: known names land in `epochs`, every other number in the long `metrics` table;
- `trial.should_stop`: True once early stopping / the target error / a `stop:` cap (steps
  at log_step; steps, examples, time at log_epoch) / an `until:` train-set target (on the
  train_loss_eval / train_acc_eval given to log_epoch) says stop (workers/budget.py);
- `trial.save_checkpoint(state)` / `trial.load_checkpoint()`: the resume state (a dict of
  tensors and plain data, read back with torch.load(weights_only=True)); a retried trial
  gets it back and its rows continue from the checkpoint's epoch, without duplicates;
- `trial.evaluate(model, split)`, `trial.measure(model=None, data=None, epoch=None)`.

A non-finite or exploding loss given to log_epoch / log_step ends the trial as `diverged`
(the same rule as batchlab's loop: `divergence_loss`). An exception in the user's code ends
it as `failed` with the user's traceback; a function that returns without logging an epoch
is `failed` with a message saying so. No Ray here.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.config import TrialConfig
from workers.data import Dataset, load_dataset_cached
from workers.evaluation import evaluate_split
from workers.losses import Loss, loss_of
from workers.models import build_model
from workers.resume_rows import compact_rows, expand_rows
from workers.trial.result import TrialResult
from workers.trial.rows import layer_rows, summary_row
from workers.trial.state import TrialState, is_divergent, probe_due, saves_checkpoints
from workers.trial_epochs import epoch_problem, file_rows, first_after
from workers.trial_measures import norm_of_diff, provenance, quantiles, system_metrics
from workers.user import resolve

# Columns of the `epochs` table log_epoch fills from its keyword arguments; the rest of the
# table (distances, norms, times) batchlab computes itself.
EPOCH_COLUMNS = (
    "step", "examples_seen", "lr", "train_loss", "train_loss_eval", "train_acc_eval",
    "val_loss", "val_acc", "epoch_time_s", "examples_per_s",
)  # fmt: skip
STEP_COLUMNS = ("lr", "batch_loss", "update_norm", "grad_norm")

_current: contextvars.ContextVar[Trial | None] = contextvars.ContextVar("batchlab_trial")


class Diverged(BaseException):
    """Raised inside the user's loop when a logged loss is NaN/inf or above divergence_loss
    (a BaseException: a user's `except Exception` does not swallow it)."""


class TrialAPIError(ValueError):
    """The user's code used the trial API wrongly; the message says how."""


def current() -> Trial:
    """The trial running in this worker (inside a trainable only)."""
    t = _current.get(None)
    if t is None:
        raise RuntimeError(
            "batchlab.trial is only available inside a trainable run by batchlab "
            "(trainable: 'package.module:function' in grid.yaml)"
        )
    return t


def _number(name: str, v: Any, where: str) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise TrialAPIError(
                f"{where}: {name} is a tensor of shape {tuple(v.shape)}; expected one number"
            )
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TrialAPIError(f"{where}: {name}={v!r} is not a number")
    return float(v)


class Trial:
    """The running trial (see the module docstring). Built by `run_user_trial`."""

    def __init__(
        self, cfg: TrialConfig, device: torch.device, data_dir: str | None, checkpoints,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ):  # fmt: skip
        self.config = cfg
        self._on_epoch = on_epoch
        self.device = device
        self._data_dir = data_dir
        self._ckpt = checkpoints
        self._data: Dataset | None = None
        self._model: nn.Module | None = None
        self._names: list[str] = []
        self._init: list[torch.Tensor] = []
        self._prev_epoch: list[torch.Tensor] = []
        self._prev_step: list[torch.Tensor] | None = None
        self._user_state: dict[str, Any] | None = None
        self.st = TrialState()
        self._t_epoch = time.perf_counter()
        self._probe_s = 0.0
        self.resumed_from_epoch = 0
        self.api_error: TrialAPIError | None = None  # raised again if the user's loop caught it
        self._epochs_logged = 0  # log_epoch calls of this attempt
        if checkpoints is not None and (saved := checkpoints.load("resume")) is not None:
            self.st = TrialState.from_saved(expand_rows(saved["trial"]))
            self._user_state = saved["user"]
            self._saved_init = saved.get("init")
            self._saved_prev = saved.get("prev")
            self.resumed_from_epoch = self.st.resumed_from_epoch = self.st.epoch
        else:
            self._saved_init = self._saved_prev = None
        # Step/metric rows from here on are the next logged epoch's (workers/trial_epochs.py).
        self._pending_steps = first_after(self.st.steps, self.st.epoch)
        self._pending_metrics = first_after(self.st.metrics, self.st.epoch)

    # ------------------------------------------------------------------ what the trial is
    @property
    def params(self) -> dict[str, Any]:
        return dict(self.config.params)

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def lr(self) -> float:
        """The lr after the scaling rule (batchlab's warmup/decay are the loop's business)."""
        return self.config.scaled_lr

    @property
    def max_epochs(self) -> int:
        return self.config.max_epochs

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def data(self) -> Dataset:
        """The configured data set (`dataset:`), loaded once per worker process."""
        if self._data is None:
            self._data = load_dataset_cached(self.config.dataset, self.device, self._data_dir)
        return self._data

    @property
    def loss(self) -> Loss:
        return loss_of(self.config)

    @property
    def should_stop(self) -> bool:
        return self.st.stop is not None

    @property
    def lr_decay(self) -> float:
        """The plateau decay factor so far (`plateau_decay:`, from the logged val_loss; 1.0
        without it): a loop that follows batchlab's schedule multiplies its lr by it."""
        return self.st.decay

    @property
    def start_epoch(self) -> int:
        """The last epoch already logged (0 for a fresh trial): resume after it."""
        return self.st.epoch

    # ------------------------------------------------------------------ the model
    def build_model(self) -> nn.Module:
        """The configured model (`model:`), built after torch.manual_seed(seed), on the
        device, watched."""
        torch.manual_seed(self.config.seed)
        d = self.data
        return self.watch(
            build_model(self.config.model, d.input_shape, d.num_classes).to(self.device)
        )

    def watch(self, model: nn.Module) -> nn.Module:
        """Measure `model` from now on (its current weights are the init, unless a resumed
        trial restores them from the checkpoint)."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._model = model
        self._names = [n for n, _ in named]
        if self._saved_init is not None and len(self._saved_init) == len(named):
            self._init = [t.to(self.device) for t in self._saved_init]
        else:
            self._init = [p.detach().clone() for _, p in named]
            if self._ckpt is not None and saves_checkpoints(self.config):
                self._ckpt.save(
                    "init", {k: v.detach().cpu() for k, v in model.state_dict().items()}
                )
        self._prev_epoch = [p.detach().clone() for _, p in named]
        self._prev_step = None
        if self._saved_prev is not None and len(self._saved_prev) == len(named):
            # A resumed trial: the weights at the checkpoint are the previous epoch's (and
            # the previous step's), whatever the model holds before the user loads them.
            self._prev_epoch = [t.to(self.device) for t in self._saved_prev]
            self._prev_step = [t.clone() for t in self._prev_epoch]
        self._t_epoch = time.perf_counter()  # epoch 1 starts now, not at data loading
        return model

    def _params(self) -> list[torch.Tensor]:
        assert self._model is not None
        return [p.detach() for p in self._model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ logging
    def _check_loss(self, name: str, v: float, step: int) -> None:
        if is_divergent(v, self.config.divergence_loss):
            self.st.diverged_step = step
            raise Diverged(f"{name} = {v}")

    def log_step(
        self, loss: Any = None, lr: Any = None, step: int | None = None, **extra: Any
    ) -> None:
        """One optimizer step done (call after optimizer.step())."""
        self.st.step = int(step) if step is not None else self.st.step + 1
        s = self.st.step
        row: dict[str, Any] = {"step": s, "epoch": self.st.epoch + 1}
        cap = self.config.stop.max_steps if self.config.stop is not None else None
        if cap is not None and s >= cap and self.st.stop is None:
            self.st.stop = "max_steps"
        if loss is not None:
            row["batch_loss"] = _number("loss", loss, "trial.log_step")
            self._check_loss("batch loss", row["batch_loss"], s)
        if lr is not None:
            row["lr"] = _number("lr", lr, "trial.log_step")
        m = self.config.measure
        if self._model is not None and m.update_norms:
            ps = self._params()
            grads = [p.grad for p in self._model.parameters() if p.requires_grad]
            if all(g is not None for g in grads):
                row["grad_norm"] = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in grads])
                ).item()
            if self._prev_step is not None:
                row["update_norm"] = torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(a - b) for a, b in zip(ps, self._prev_step, strict=True)])).item()  # fmt: skip
            self._prev_step = [p.clone() for p in ps]
        if m.store_steps:
            self.st.steps.append(row)
        for k, v in extra.items():
            self.st.metrics.append({"epoch": row["epoch"], "step": s, "name": k,
                                       "value": _number(k, v, "trial.log_step")})  # fmt: skip

    def log_epoch(self, epoch: int, **values: Any) -> None:
        """Epoch `epoch` (1-based, increasing, <= max_epochs: workers/trial_epochs.py) ended.
        Known names: EPOCH_COLUMNS; other numbers go to `metrics`. The first epoch a resumed
        attempt logs may go back: it replaces the rows from that epoch on."""
        now = time.perf_counter()
        st = self.st
        last, back = st.epoch, bool(self.resumed_from_epoch) and self._epochs_logged == 0
        if (problem := epoch_problem(epoch, last, self.config.max_epochs, back)) is not None:
            self.api_error = self.api_error or TrialAPIError(problem)
            raise TrialAPIError(problem)
        self._epochs_logged += 1
        replace = epoch <= last  # a resumed attempt re-runs epochs: drop their old rows
        if replace:
            st.drop_from(epoch)
        st.steps = file_rows(st.steps, self._pending_steps, epoch, replace)
        st.metrics = file_rows(st.metrics, self._pending_metrics, epoch, replace)
        known = {
            k: _number(k, v, "trial.log_epoch") for k, v in values.items() if k in EPOCH_COLUMNS
        }
        extra = {
            k: _number(k, v, "trial.log_epoch") for k, v in values.items() if k not in EPOCH_COLUMNS
        }
        row = self._epoch_row(epoch, known, now)
        st.epoch = epoch
        st.epochs.append(row)
        for name in ("train_loss", "val_loss"):
            if name in row:
                self._check_loss(name, row[name], st.step)
        for k, v in extra.items():
            st.metrics.append({"epoch": epoch, "step": st.step, "name": k, "value": v})
        reason = None
        if "val_loss" in row:
            reason = st.record_validation(
                self.config, row["val_loss"], row.get("val_acc", math.nan), epoch
            )
        # The shared epoch-end rule (workers/trial/state.py), with the `stop:` caps checked
        # here (a user loop reports steps and examples at epoch ends).
        decision = st.close_epoch(self.config, row, reason, caps=True)
        if st.stop is None:
            st.stop = decision
        if probe_due(self.config, epoch) and self._model is not None and self._data is not None:
            self.measure(epoch=epoch)
        self._probe_s = 0.0
        self._pending_steps, self._pending_metrics = len(st.steps), len(st.metrics)
        if self._on_epoch is not None:
            self._on_epoch(row)
        self._t_epoch = time.perf_counter()

    def _epoch_row(self, epoch: int, known: dict[str, float], now: float) -> dict[str, Any]:
        """The epochs row of a logged epoch: the user's numbers, and what batchlab measures
        itself (times, step-norm quantiles, distances, system metrics)."""
        st = self.st
        t_epoch = known.pop("epoch_time_s", None)
        if t_epoch is None:
            t_epoch = max(0.0, now - self._t_epoch - self._probe_s)
        st.elapsed_s += t_epoch
        row: dict[str, Any] = {"epoch": epoch, "step": st.step, "epoch_time_s": t_epoch,
                               "elapsed_s": st.elapsed_s, **known}  # fmt: skip
        if "step" in known:
            st.step = int(known["step"])
            row["step"] = st.step
        if "examples_seen" not in row and self._data is not None:
            row["examples_seen"] = epoch * self._data.n_train
        if "examples_per_s" not in row and t_epoch > 0 and "examples_seen" in row:
            prev = st.epochs[-1].get("examples_seen", 0) if st.epochs else 0
            row["examples_per_s"] = (row["examples_seen"] - (prev or 0)) / t_epoch
        self._epoch_steps(row, epoch)
        self._distances(row, epoch)
        system_metrics(row, time.perf_counter(), self.device, st)
        row["eval_time_s"] = math.nan  # inside the user's loop: not separable from training
        row["probe_time_s"] = self._probe_s
        return row

    def _epoch_steps(self, row: dict[str, Any], epoch: int) -> None:
        """Per-epoch quantiles of the epoch's logged step norms (as batchlab's loop)."""
        steps = [r for r in self.st.steps if r["epoch"] == epoch]
        for col in ("update_norm", "grad_norm"):
            vals = torch.tensor([r[col] for r in steps if col in r], dtype=torch.float64)
            row.update({f"{col}_{k}": v for k, v in quantiles(vals).items()})
        if "train_loss" not in row:
            losses = [r["batch_loss"] for r in steps if "batch_loss" in r]
            if losses:
                row["train_loss"] = sum(losses) / len(losses)
        if "lr" not in row:
            lrs = [r["lr"] for r in steps if "lr" in r]
            if lrs:
                row["lr"] = lrs[-1]

    def _distances(self, row: dict[str, Any], epoch: int) -> None:
        """Distance from init (total, per layer) and from the previous epoch, as batchlab's
        loop measures them (`workers.trial_measures.norm_of_diff`), with one host sync per
        list."""
        if self._model is None:
            return
        cur = self._params()
        d_init, per = norm_of_diff(cur, self._init)
        ep_dist, _ = norm_of_diff(cur, self._prev_epoch)
        row["dist_from_init"], row["epoch_distance"] = d_init.item(), ep_dist.item()
        self._prev_epoch = [p.clone() for p in cur]
        if self.config.measure.layers:
            norms0 = torch.stack([torch.linalg.vector_norm(p0) for p0 in self._init]).tolist()
            pnorms = torch.stack([torch.linalg.vector_norm(p) for p in cur]).tolist()
            numels = [p.numel() for p in cur]
            self.st.layers += layer_rows(epoch, self._names, numels, per.tolist(), norms0, pnorms)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Keep `state` (your model/optimizer state dicts, epoch, ...) as the resume point,
        with batchlab's rows so far; call it after log_epoch."""
        if self._ckpt is None:
            return
        if not isinstance(state, dict):
            raise TrialAPIError(
                f"trial.save_checkpoint: state is a {type(state).__name__}; expected a dict"
            )
        saved = {"user": state, "trial": compact_rows(self.st.as_saved())}  # workers/resume_rows.py
        if self._init:
            saved["init"] = [t.cpu() for t in self._init]
            saved["prev"] = [t.cpu() for t in self._params()]
        self._ckpt.save("resume", saved)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state given to the last save_checkpoint of an earlier attempt, or None."""
        return self._user_state

    # ------------------------------------------------------------------ measurements
    def evaluate(self, model: nn.Module, split: str = "val") -> tuple[float, float]:
        """(mean loss, accuracy) of `model` on the configured data's split ("val"/"train")."""
        loss, acc = evaluate_split(model, self.data, split, self.loss)
        return loss.item(), acc.item()

    def measure(self, model: nn.Module | None = None, data: Any = None, epoch: int | None = None,
                loss_fn: Callable | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Run the configured probes (`measure:`) on `model` (default: the watched one) with
        the trial's loss, on `data` ((x, y) tensors; default: trial.data's training split).
        Rows land in `probes` at `epoch` (default: the last logged epoch)."""
        from workers.probes import run_probes

        model = model if model is not None else self._model
        if model is None:
            raise TrialAPIError(
                "trial.measure: no model given and none watched (trial.watch(model))"
            )
        x, y = data if data is not None else (self.data.x_train, self.data.y_train)
        epoch = epoch if epoch is not None else self.st.epoch
        t0 = time.perf_counter()
        rows = run_probes(model, x, y, self.config.measure, seed=self.seed, epoch=epoch,
                          loss_fn=loss_fn or self.loss.fn, batch_size=self.config.batch_size)  # fmt: skip
        self._probe_s += time.perf_counter() - t0
        self.st.probes = [r for r in self.st.probes if r["epoch"] != epoch] + rows
        self.st.measured_epochs.append(epoch)
        return rows

    @property
    def data_if_loaded(self) -> Dataset | None:
        """The configured data set when the user's loop used it (else None: not loaded)."""
        return self._data

    def finish(self, completed: bool) -> None:
        """End of a completed trial: probes at the final weights (when a model is watched and
        the configured data was used), final weights."""
        m = self.config.measure
        if not completed or self._model is None:
            return
        due = self._data is not None and self.st.epoch not in self.st.measured_epochs
        if m.probes_on and due:
            self.measure()
        if self._ckpt is not None and saves_checkpoints(self.config):
            self._ckpt.save(
                "final", {k: v.detach().cpu() for k, v in self._model.state_dict().items()}
            )


def _call(fn: Callable[..., Any], trial: Trial) -> Any:
    import inspect

    try:
        takes = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            for p in inspect.signature(fn).parameters.values()
        )
    except (TypeError, ValueError):
        takes = True
    return fn(trial) if takes else fn()


def _steps_per_epoch(st: TrialState) -> int | None:
    """A user loop's steps per epoch: the step count at its last logged epoch over the
    epochs logged (steps of a diverged epoch that was never logged are not counted), None
    before the first logged epoch."""
    last = st.epochs[-1].get("step", st.step) if st.epochs else 0
    return int(last) // st.epoch if st.epoch and last else None


def run_user_trial(
    cfg: TrialConfig, dev: torch.device, data_dir: str | None, checkpoints,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrialResult:  # fmt: skip
    """Run `cfg.trainable` and turn what it logged into a TrialResult (see the module
    docstring). Exceptions of the user's code propagate (run_trial records them)."""
    t_start = time.perf_counter()
    fn = resolve(cfg.trainable, "trainable")
    trial = Trial(cfg, dev, data_dir, checkpoints, on_epoch)
    token = _current.set(trial)
    status, stop_reason = "completed", "max_epochs"
    torch.manual_seed(cfg.seed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        _call(fn, trial)
    except Diverged:
        status, stop_reason = "diverged", "diverged"
    finally:
        _current.reset(token)
    if trial.api_error is not None:  # the user's loop caught it and went on: still failed
        raise trial.api_error
    st = trial.st
    if not st.epochs and status == "completed":
        raise TrialAPIError(
            f"trainable: {cfg.trainable!r} returned without logging an epoch; call "
            "trial.log_epoch(epoch, train_loss=..., val_loss=...) at every epoch end"
        )
    if status == "completed":
        stop_reason = st.stop or ("max_epochs" if st.epoch >= cfg.max_epochs else "returned")
        trial.finish(True)
    data = trial.data_if_loaded
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else math.nan
    summary = summary_row(
        st, provenance=provenance(dev),
        n_train=data.n_train if data is not None else None,
        n_val=data.n_val if data is not None else None,
        steps_per_epoch=_steps_per_epoch(st),
        scaled_lr=cfg.scaled_lr, wall_time_s=time.perf_counter() - t_start, peak_memory_mb=peak,
    )  # fmt: skip
    return TrialResult(
        trial_id=cfg.trial_id, config_hash=cfg.config_hash, status=status,
        stop_reason=stop_reason, summary=summary, epochs=st.epochs, steps=st.steps,
        layers=st.layers, probes=st.probes, metrics=st.metrics,
    )  # fmt: skip
