"""One batchlab trial fed by a framework's hooks (Lightning, Hugging Face, Ray Tune).

The integrations never write rows themselves. They talk to a `Recorder`:

- inside a batchlab grid (the framework runs in a `trainable:`), the recorder is the running
  trial itself (`batchlab.trial.current()`): the grid's trial id, checkpoints and commit;
- standalone (a plain script), `TrialSession` runs batchlab's own worker entry point
  (`scheduler.tasks.execute_trial`) in a thread, with the trainable `serve` below: the
  script's hook calls are handed to the `workers/trial_api.py` Trial one at a time (the
  script waits for each), so every row, summary, provenance column and the commit
  (`warehouse.store.write_trial`, the `trials` row last) are the ones a grid trial gets.

A script that raises (or exits) before the framework's end hook commits the trial as
`failed` with the reason; a killed process commits nothing (no `trials` row: the trial is
not counted), as for a killed batchlab worker.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import threading
import warnings
from collections.abc import Mapping
from typing import Any

from warehouse.importers import TRIAL_FIELDS
from warehouse.importers.reading import is_secret_key
from warehouse.layout import Layout, check_experiment, default_root
from workers.config import TrialConfig

SERVE = "batchlab.integrations.session:serve"
NO_DATA = "batchlab.integrations.session:no_data"
NO_MODEL = "batchlab.integrations.session:no_model"
_END = object()
# A run's epoch budget when the framework does not say (Lightning's own default cap for
# max_epochs=None): a trial's `max_epochs` is part of its identity, and the trial API
# refuses an epoch beyond it.
UNKNOWN_MAX_EPOCHS = 1000
_channels: dict[int, _Channel] = {}  # execute_trial's thread id -> its channel


class TrialEnded(RuntimeError):
    """The trial ended (diverged, or finished) before this call."""


def running_trial() -> Any | None:
    """The batchlab trial running in this process (inside a grid's trainable), or None."""
    from batchlab import trial

    try:
        return trial.current()
    except RuntimeError:
        return None


def no_data(**_: Any) -> None:
    raise RuntimeError("a framework integration's trial has no batchlab data set")


def no_model(**_: Any) -> None:
    raise RuntimeError("a framework integration's trial has no batchlab model factory")


def _scalar(v: Any) -> Any:
    if isinstance(v, bool | str) or v is None:
        return v
    if isinstance(v, int | float):
        return v if not isinstance(v, float) or math.isfinite(v) else str(v)
    try:  # numpy / torch scalars
        return _scalar(v.item())
    except (AttributeError, ValueError, RuntimeError):
        return str(v)


def _pick(params: Mapping[str, Any], field: str) -> Any:
    for name in TRIAL_FIELDS[field]:
        if params.get(name) is not None:
            return params[name]
    return None


def trial_config(
    hparams: Mapping[str, Any],
    *,
    framework: str,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    max_epochs: int | None = None,
    model: str | None = None,
    dataset: str | None = None,
    optimizer: str | None = None,
) -> TrialConfig:
    """The TrialConfig of a standalone framework run: batch size, lr and seed from the
    hyperparameters (the importers' names: `warehouse.importers.TRIAL_FIELDS`) unless given,
    every other scalar hyperparameter as a free axis (`params`), plus `framework`."""
    hp = {str(k): _scalar(v) for k, v in hparams.items()}
    hp = {k: v for k, v in hp.items() if isinstance(v, bool | str | int | float) or v is None}
    bs = batch_size if batch_size is not None else _pick(hp, "batch_size")
    lr_ = lr if lr is not None else _pick(hp, "lr")
    if bs is None or lr_ is None:
        raise ValueError(
            f"{framework}: no batch size / learning rate found in the hyperparameters "
            f"{sorted(hp) or '(none)'}; pass batch_size= and lr= to the batchlab logger"
        )
    hp = {k: v for k, v in hp.items() if not is_secret_key(k)}  # as the importers do
    if max_epochs is None:
        given = [hp.get(k) for k in ("max_epochs", "epochs", "num_epochs", "num_train_epochs")]
        max_epochs = next((int(v) for v in given if isinstance(v, int) and v > 0), None)
    sd = seed if seed is not None else _pick(hp, "seed")
    if sd is None:
        sd = int(os.environ.get("PL_GLOBAL_SEED", 0))
    used = {n for f in ("batch_size", "lr", "seed") for n in TRIAL_FIELDS[f]}
    params = {k: v for k, v in hp.items() if k not in used}
    opt = (optimizer or str(params.get("optimizer") or "sgd")).lower()
    params["framework"] = framework
    if opt not in ("sgd", "adam"):  # TrialConfig knows sgd / adam; the class is kept
        params["optimizer_class"] = opt
        opt = "adam" if "adam" in opt else "sgd"
    return TrialConfig.model_validate(
        {
            "dataset": {"loader": NO_DATA, "name": dataset or "unknown"},
            "model": {"factory": NO_MODEL, "name": model or "unknown"},
            "optimizer": {"name": opt},
            "batch_size": int(bs),
            "lr": float(lr_),
            "base_batch_size": int(bs),
            "seed": int(sd),
            "max_epochs": max(1, int(max_epochs or UNKNOWN_MAX_EPOCHS)),
            "trainable": SERVE,
            "params": params,
        }
    )


class _Channel:
    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()


def serve(trial: Any) -> None:
    """The trainable of a standalone session: runs the script's calls on `trial`."""
    ch = _channels[threading.get_ident()]
    ended: BaseException | None = None
    while True:
        item = ch.calls.get()
        if item is _END:
            return
        name, args, kwargs = item
        if name == "fail":
            raise RuntimeError(args[0])
        if ended is not None:
            ch.answers.put(TrialEnded(f"the trial ended: {ended}"))
            continue
        try:
            ch.answers.put(getattr(trial, name)(*args, **kwargs))
        except BaseException as exc:  # the Diverged BaseException too: the caller learns it
            ch.answers.put(exc)
            if not isinstance(exc, Exception):
                ended = exc
                raise


class TrialSession:
    """A standalone trial: `execute_trial` in a thread, fed by `call(name, ...)`."""

    def __init__(
        self,
        cfg: TrialConfig,
        *,
        storage: str | os.PathLike | None = None,
        experiment: str,
        code_version: str,
        device: str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.root = str(storage if storage is not None else default_root())
        self.experiment = check_experiment(experiment)
        self.code_version = code_version
        self.device = device
        self.result: dict[str, Any] | None = None
        self.ended = False
        self._ch = _Channel()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="batchlab-trial", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    @property
    def trial_id(self) -> str:
        return self.cfg.trial_id

    def _run(self) -> None:
        from scheduler.tasks import execute_trial

        _channels[threading.get_ident()] = self._ch
        try:
            self.result = execute_trial(
                self.cfg.canonical_json(),
                self.experiment,
                self.root,
                code_version=self.code_version,
                device=self.device,
                resume=False,
            )
        except BaseException as exc:  # storage errors: raised again by finish()
            self._error = exc
        finally:
            _channels.pop(threading.get_ident(), None)
            self._ch.answers.put(TrialEnded("the trial's worker ended"))

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run `trial.<name>(*args, **kwargs)` in the trial; raises what it raised."""
        if self.ended or not self._thread.is_alive():
            raise TrialEnded("the trial ended")
        self._ch.calls.put((name, args, kwargs))
        out = self._ch.answers.get()
        if isinstance(out, BaseException):
            raise out
        return out

    def finish(self, error: str | None = None) -> dict[str, Any] | None:
        """End the trial (committed: completed/diverged, or failed with `error`), wait for
        its rows, refresh `<root>/batchlab.duckdb`; returns execute_trial's record."""
        if self.ended:
            return self.result
        self.ended = True
        atexit.unregister(self._at_exit)
        self._ch.calls.put(("fail", (error,), {}) if error else _END)
        self._thread.join()
        if self._error is not None:
            raise self._error
        from warehouse.db import write_duckdb_file

        write_duckdb_file(Layout.open(self.root))
        return self.result

    def _at_exit(self) -> None:
        if not self.ended:
            self.finish("the process exited before the framework ended training")


def integration_session(
    cfg: TrialConfig,
    framework: str,
    version: str,
    *,
    storage: str | os.PathLike | None,
    experiment: str,
    device: str = "cpu",
) -> TrialSession:
    """A standalone `TrialSession` of a framework integration, its code version
    `integration:<framework>==<version>` (the framework package's version)."""
    return TrialSession(
        cfg,
        storage=storage,
        experiment=experiment,
        device=device,
        code_version=f"integration:{framework}=={version}",
    )


class Recorder:
    """What an integration logs to: the grid's running trial, or a standalone session.

    `call(name, ...)` runs `trial.<name>(...)`. A divergence (a logged loss NaN/inf or above
    `divergence_loss`) sets `diverged`; inside a grid it propagates (the grid's trial ends
    as `diverged`), standalone the session has committed the trial and the framework is
    asked to stop. Calls after the end are ignored."""

    def __init__(self, trial: Any | None = None, session: TrialSession | None = None) -> None:
        self.trial, self.session = trial, session
        self.diverged = False
        self.rejected: str | None = None  # a call the trial API refused (standalone)

    @property
    def standalone(self) -> bool:
        return self.session is not None

    @property
    def trial_id(self) -> str:
        return self.session.trial_id if self.session else self.trial.config.trial_id

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        from workers.trial_api import Diverged, TrialAPIError

        if self.session is None:
            try:
                return getattr(self.trial, name)(*args, **kwargs)
            except Diverged:
                self.diverged = True
                raise
        if self.diverged or self.session.ended:
            return None
        try:
            return self.session.call(name, *args, **kwargs)
        except Diverged:
            self.diverged = True
        except TrialAPIError as exc:  # the trial ends `failed` with it (trial_api re-raises)
            self.rejected = str(exc)
            warnings.warn(f"batchlab: {exc}", RuntimeWarning, stacklevel=2)
        except TrialEnded:
            pass
        return None

    def finish(self, error: str | None = None) -> dict[str, Any] | None:
        """Standalone: commit the trial; inside a grid: nothing (the grid commits it)."""
        return self.session.finish(error) if self.session is not None else None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one level, its keys joined by dots (`{"a": {"b": 1}}` ->
    `{"a.b": 1}`)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The one-number values of a metrics mapping (tensors of one element included)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, str | bytes):  # float("13215_00001") is a number to Python
            continue
        try:
            if hasattr(v, "numel") and v.numel() != 1:
                continue
            f = float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError):
            continue
        if not isinstance(v, bool):
            out[str(k)] = f
    return out


def epoch_values(metrics: Mapping[str, float]) -> dict[str, float]:
    """A framework's end-of-epoch metrics as `trial.log_epoch` keywords: the common names
    of the importers (`warehouse.importers.EPOCH_FIELDS`) become batchlab's columns
    (train_loss, val_loss, val_acc, lr, ...), every other number goes to `metrics`."""
    from warehouse.importers import EPOCH_FIELDS

    out: dict[str, float] = {}
    used: set[str] = set()
    for field, names in EPOCH_FIELDS.items():
        if field in ("epoch", "step", "elapsed_s", "epoch_time_s"):  # batchlab's own
            used.update(names)
            continue
        for n in (*names, f"{names[0]}_epoch"):
            if n in metrics:
                out[field] = metrics[n]
                used.add(n)
                break
    for k, v in metrics.items():
        if k not in used and k not in out and not k.endswith("_step"):
            out[k] = v
    return out
