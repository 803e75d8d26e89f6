"""Studies run elsewhere, into the warehouse: `batchlab import ray-tune|tensorboard|csv`.

Each importer (`ray_tune.py`, `tensorboard.py`, `table.py`) reads its source into
`SourceTrial`s: a stable key inside the source, the hyperparameters found, and per-epoch
metrics. `import_trials` turns them into `trials` and `epochs` rows (plus every other
numeric metric in `metrics`, where the schema has that table) and writes each trial through
`warehouse.store.write_trial`, so an imported trial has the commit semantics of a trained
one. Rules (docs/cli.md "Importing studies run elsewhere"):

- identity: `trial_id` = 16 hex digits of sha256(source, key); `config_hash` = sha256 of the
  trial's imported content. Re-importing an unchanged source writes nothing; a source trial
  that changed (e.g. more epochs) replaces its rows.
- provenance: `code_version` = `import:<source>`; `config_json` holds the source, its path,
  the key, the params and the mapping used.
- batch size and lr come from the params (common names, or `--map batch_size=NAME`); a trial
  without them is an error naming the trial and the params it has.
- what the source cannot know is NULL, never invented: distances from the initial weights,
  per-layer rows, probes (sharpness, Hessian, noise scale), steps, update/gradient norms,
  device and memory. Times are the source's wall-clock times per epoch (evaluation
  included), so `train_time_s` of an imported trial is an upper bound of batchlab's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from warehouse.importers.reading import (
    MAX_EXACT,
    ImportError_,
    drop_secrets,
    is_secret_key,
    number,
    whole,
)
from warehouse.layout import EXPERIMENT_RE, TMP_MARK, Layout, check_experiment
from warehouse.schemas import SCHEMAS
from warehouse.store import read_trial_rows, write_trial

SOURCES = ("ray-tune", "tensorboard", "csv", "mlflow")
UNKNOWN = "unknown"  # dataset / model / optimizer of a source that does not name them

# batchlab field -> the names a source commonly uses for it (first found wins); `--map
# FIELD=NAME` puts NAME first. Trial fields come from the params, epoch fields from metrics.
TRIAL_FIELDS: dict[str, tuple[str, ...]] = {
    "batch_size": (
        "batch_size",
        "batchsize",
        "bs",
        "train_batch_size",
        "per_device_train_batch_size",
    ),
    "lr": ("lr", "learning_rate", "base_lr", "lr0"),
    "seed": ("seed", "random_seed"),
    "dataset": ("dataset", "data"),
    "model": ("model", "arch", "architecture"),
    "optimizer": ("optimizer", "optim"),
    "momentum": ("momentum",),
}
EPOCH_FIELDS: dict[str, tuple[str, ...]] = {
    "epoch": ("epoch", "epochs"),
    "step": ("step", "global_step", "steps", "_step"),
    "train_loss": ("train_loss", "loss", "loss/train", "train/loss", "training_loss", "Loss/train"),
    "val_loss": (
        "val_loss",
        "validation_loss",
        "valid_loss",
        "eval_loss",
        "test_loss",
        "loss/val",
        "val/loss",
        "loss/validation",
        "Loss/val",
        "Loss/test",
    ),
    "val_acc": (
        "val_acc",
        "val_accuracy",
        "valid_acc",
        "eval_accuracy",
        "test_acc",
        "accuracy/val",
        "val/acc",
        "acc/val",
        "Accuracy/val",
        "Accuracy/test",
    ),
    "train_acc_eval": ("train_acc", "train_accuracy", "accuracy/train", "train/acc", "acc/train"),
    "lr": ("lr", "learning_rate", "lr/train"),
    "epoch_time_s": ("epoch_time_s", "time_this_iter_s"),
    "elapsed_s": ("elapsed_s", "time_total_s"),
}
# `import csv`: the column naming the run of each row (else: one run per distinct params).
RUN_FIELD = ("run", "run_id", "run_name", "Name", "name", "trial_id", "trial")
MAPPABLE = (*TRIAL_FIELDS, *EPOCH_FIELDS, "run")


@dataclass
class SourceTrial:
    key: str  # stable identity inside the source (a relative path, a run id)
    params: dict[str, Any]
    epochs: list[dict[str, Any]]  # per epoch: metric name -> value (source names)
    # host, started_at, finished_at, error; "file": the file (or run folder) read
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the reader left out, and why


@dataclass
class ImportReport:
    source: str
    experiment: str
    imported: list[str] = field(default_factory=list)  # trial ids written
    unchanged: list[str] = field(default_factory=list)  # already in the warehouse, same content
    notes: list[str] = field(default_factory=list)  # left out: secret-looking keys, links out
    removed_temporaries: int = 0  # hidden temporaries of crashed writers removed first

    def summary(self) -> str:
        lines = [
            f"imported {len(self.imported)} trials from {self.source} into experiment "
            f"{self.experiment!r} ({len(self.unchanged)} already there, unchanged)"
        ]
        if self.removed_temporaries:
            lines.append(
                f"  removed {self.removed_temporaries} temporary files left by crashed writers"
            )
        return "\n".join([*lines, *(f"  note: {n}" for n in self.notes)])


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """`["batch_size=bs", "val_loss=loss/val"]` -> {field: source name}; refuses unknown fields."""
    out = {}
    for item in items:
        fld, sep, name = item.partition("=")
        fld, name = fld.strip(), name.strip()
        if not sep or not fld or not name:
            raise ImportError_(f"--map: {item!r} is not FIELD=NAME (e.g. batch_size=bs)")
        if fld not in MAPPABLE:
            raise ImportError_(f"--map: unknown field {fld!r}; fields: {', '.join(MAPPABLE)}")
        out[fld] = name
    return out


def experiment_name(text: str) -> str:
    """A valid experiment name from a folder or file name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._")[:128] or "imported"
    return name if EXPERIMENT_RE.match(name) else f"x{name}"[:128]


def _pick(values: Mapping[str, Any], fld: str, names: tuple[str, ...], mapping: Mapping[str, str]):
    cands = (mapping[fld], *names) if fld in mapping else names
    for n in cands:
        if n in values and values[n] is not None and values[n] != "":
            return values[n], n
    return None, None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params (Ray Tune's `train_loop_config`, ...) with both the leaf and the
    dotted names: {"a": {"b": 1}} -> {"a.b": 1, "b": 1} (a top-level name wins)."""
    out: dict[str, Any] = {}
    leaves: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            sub = _flatten(v, f"{name}.")
            out.update(sub)
            for sk, sv in sub.items():
                leaves.setdefault(sk.rsplit(".", 1)[-1], sv)
        else:
            out[name] = v
    return {**leaves, **out}


def _epoch_rows(
    st: SourceTrial, mapping: Mapping[str, str], where: str
) -> tuple[list[dict], list[dict]]:
    """(epochs rows, metrics rows) of one source trial, epochs numbered from 1. Linear in
    the rows; a bad epoch or step number is a one-line error naming `where`."""
    rows, extra = [], []
    used_names: set[str] = set()
    for i, raw in enumerate(st.epochs):
        row: dict[str, Any] = {}
        for fld, names in EPOCH_FIELDS.items():
            v, n = _pick(raw, fld, names, mapping)
            if n is not None:
                used_names.add(n)
                row[fld] = v if fld in ("epoch", "step") else number(v)
        ep = row.pop("epoch", None)
        row["epoch"] = (
            i + 1 if ep is None else whole(ep, f"epoch {i + 1}: epoch", where, 0, MAX_EXACT)
        )
        if row.get("step") is not None:
            row["step"] = whole(row["step"], f"epoch {row['epoch']}: step", where, 0, MAX_EXACT)
        rows.append(row)
    shift = 1 if rows and min(r["epoch"] for r in rows) == 0 else 0  # 0-based -> 1-based
    raw_epochs = [r["epoch"] + shift for r in rows]
    for r, e in zip(rows, raw_epochs, strict=True):
        r["epoch"] = e
    # One row per epoch: a source that logged an epoch twice keeps its last value.
    by_epoch = {r["epoch"]: r for r in rows}
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    total, known = 0.0, True  # elapsed_s = the running sum of epoch times, while all known
    for r in rows:
        t = r.get("epoch_time_s")
        known = known and t is not None
        total += t if known else 0.0
        if r.get("elapsed_s") is None and t is not None and known:
            r["elapsed_s"] = total
    if "metrics" in SCHEMAS:
        names = SCHEMAS["metrics"].names
        seen = {}  # one value per (epoch, name): the last
        for raw, epoch in zip(st.epochs, raw_epochs, strict=True):
            for n, v in raw.items():
                f = number(v)
                if n in used_names or f is None:
                    continue
                m = {"epoch": epoch, "name": n, "value": f}
                seen[(epoch, n)] = {k: x for k, x in m.items() if k in names}
        extra = list(seen.values())
    return rows, extra


def _trial_row(
    source: str,
    st: SourceTrial,
    epochs: list[dict],
    mapping: Mapping[str, str],
    where: str,
    origin: str,
) -> dict[str, Any]:
    params = _flatten(st.params)
    got = {f: _pick(params, f, names, mapping)[0] for f, names in TRIAL_FIELDS.items()}
    for need in ("batch_size", "lr"):
        if got[need] is None:
            raise ImportError_(
                f"{where}: no {need} in its params {sorted(params) or '(none)'}; "
                f"pass --map {need}=<param name>"
            )
    lr = number(got["lr"])
    if lr is None or not math.isfinite(lr) or lr <= 0:
        raise ImportError_(f"{where}: lr {got['lr']!r} is not a positive number")
    vl = [(r["epoch"], r.get("val_loss")) for r in epochs]
    finite_vl = [(e, v) for e, v in vl if v is not None and math.isfinite(v)]
    best_epoch, best = min(finite_vl, key=lambda x: (x[1], x[0])) if finite_vl else (-1, None)
    losses = [r.get(k) for r in epochs for k in ("train_loss", "val_loss")]
    diverged = any(v is not None and not math.isfinite(v) for v in losses)
    error = st.info.get("error")
    status = "failed" if error else ("diverged" if diverged else "completed")
    accs = [
        r["val_acc"] for r in epochs if r.get("val_acc") is not None and math.isfinite(r["val_acc"])
    ]
    times = [r.get("epoch_time_s") for r in epochs]
    last = epochs[-1] if epochs else {}
    steps = [r["step"] for r in epochs if r.get("step") is not None]
    config = {
        "source": source,
        "path": origin,
        "key": st.key,
        "params": st.params,
        "mapping": dict(mapping),
    }
    return {
        "status": status,
        "stop_reason": "error" if error else ("diverged" if diverged else None),
        "error": error,
        # Labels the grouping keys need (queries group trials by them): "unknown" when the
        # source does not name them (a label, not a measurement).
        "dataset": UNKNOWN if got["dataset"] is None else str(got["dataset"]),
        "model": UNKNOWN if got["model"] is None else str(got["model"]),
        "optimizer": UNKNOWN if got["optimizer"] is None else str(got["optimizer"]),
        "momentum": number(got["momentum"]),
        "batch_size": whole(got["batch_size"], "batch_size", where, 1),
        "lr": lr,
        "scaled_lr": lr,
        "lr_scaling": "none",
        "seed": None if got["seed"] is None else whole(got["seed"], "seed", where),
        "epochs_run": len(epochs),
        "steps_run": max(steps) if steps else None,
        "best_val_loss": best,
        "best_val_acc": max(accs) if accs else None,
        "best_epoch": best_epoch,
        "steps_to_target": -1,
        "diverged_step": -1,
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "train_time_s": sum(times) if times and all(t is not None for t in times) else None,
        "wall_time_s": number(st.info.get("wall_time_s")),
        "attempt": 1,
        "data_parallel_workers": 1,
        "config_json": json.dumps(config, sort_keys=True, default=str),
        "host": None if st.info.get("host") is None else str(st.info["host"]),
        "device": None,
        "started_at": st.info.get("started_at"),
        "finished_at": st.info.get("finished_at"),
    }


def _hash(*parts: Any) -> str:
    return hashlib.sha256(
        json.dumps(parts, sort_keys=True, default=str, allow_nan=True).encode()
    ).hexdigest()


def import_trials(
    layout: Layout | str,
    source: str,
    origin: str,
    experiment: str,
    trials: list[SourceTrial],
    mapping: Mapping[str, str] | None = None,
) -> ImportReport:
    """Write `trials` (read from `origin` by the `source` importer) into `experiment`;
    skips trials already imported with the same content. Every trial is checked before the
    first is written: a source with a bad trial writes nothing."""
    layout = layout if isinstance(layout, Layout) else Layout.open(layout)
    check_experiment(experiment)
    mapping = dict(mapping or {})
    if not trials:
        raise ImportError_(f"{origin}: no {source} trials found there")
    prepared = []
    notes: list[str] = []
    seeds: dict[tuple, int] = {}
    for st in sorted(trials, key=lambda t: t.key):
        st, dropped = _without_secrets(st)
        where = f"{source} trial {st.key!r} ({st.info.get('file') or origin})"
        notes += [f"{where}: {n}" for n in st.notes]
        if dropped:
            notes.append(f"{where}: dropped secret-looking keys {', '.join(sorted(dropped))}")
        epochs, extra = _epoch_rows(st, mapping, where)
        measured = extra or any(
            v is not None for r in epochs for k, v in r.items() if k not in ("epoch", "step")
        )
        if not measured and not st.info.get("error"):
            raise ImportError_(
                f"{where}: no metrics in it (no epochs, no scalars: empty, still being "
                "written, or not a results file); nothing imported: move it aside or fix it"
            )
        row = _trial_row(source, st, epochs, mapping, where, origin)
        if row["seed"] is None:  # replicates of one configuration: numbered, in key order
            cfg = (row["batch_size"], row["lr"], row["dataset"], row["model"], row["optimizer"])
            row["seed"] = seeds[cfg] = seeds.get(cfg, -1) + 1
        tid = _hash(source, st.key)[:16]
        row |= {
            "trial_id": tid,
            # the content, not where it was read from: the same study re-imported from
            # another folder level or path is unchanged
            "config_hash": _hash(
                {k: v for k, v in row.items() if k != "config_json"},
                st.params,
                mapping,
                epochs,
                extra,
            ),
            "code_version": f"import:{source}",
        }
        prepared.append((row, epochs, extra))
    report = ImportReport(source, experiment, notes=notes)
    try:
        _write(layout, experiment, prepared, report)
    except OSError as exc:  # a full disk, a read-only root: name the root, not a temporary
        from warehouse.export import errno_of

        _remove_own_temporaries(layout, experiment)
        name = exc.filename
        if name is None or TMP_MARK in os.path.basename(str(name)):
            code = errno_of(exc)
            raise OSError(code, os.strerror(code), layout.root) from exc
        raise
    except duckdb.IOException as exc:  # rebuilding batchlab.duckdb
        from warehouse.export import os_error_from

        raise (os_error_from(exc, layout.duckdb_file) or exc) from exc
    return report


def _remove_own_temporaries(layout: Layout, experiment: str) -> None:
    """Delete the temporaries this process left in the experiment's table folders when a
    write failed (a full disk): no other writer uses its host and pid."""
    if not layout.is_local:
        return
    mine = f"{TMP_MARK}{socket.gethostname()}-{os.getpid()}-"
    for table in SCHEMAS:
        folder = Path(layout.table_dir(table, experiment))
        with contextlib.suppress(OSError):
            for p in folder.glob(f".*{mine}*"):
                p.unlink(missing_ok=True)


def _write(layout: Layout, experiment: str, prepared: list, report: ImportReport) -> None:
    report.removed_temporaries = layout.clean_temporaries()  # crashed writers' (as `run` does)
    have = {r["trial_id"]: r["config_hash"] for r in read_trial_rows(layout, experiment)}
    for row, epochs, extra in prepared:
        if have.get(row["trial_id"]) == row["config_hash"]:
            report.unchanged.append(row["trial_id"])
            continue
        tables: dict[str, list[dict]] = {"epochs": epochs}
        if extra:
            tables["metrics"] = extra
        write_trial(layout, experiment, row, tables)
        report.imported.append(row["trial_id"])
    if report.imported:
        from warehouse.db import write_duckdb_file

        write_duckdb_file(layout)


def _without_secrets(st: SourceTrial) -> tuple[SourceTrial, set[str]]:
    """`st` without secret-looking parameter or metric names; and the names dropped."""
    params, dropped = drop_secrets(st.params)
    names = {k for raw in st.epochs for k in raw}
    bad = {k for k in names if is_secret_key(k)}
    if not bad:
        return replace(st, params=params), set(dropped)
    epochs = [{k: v for k, v in raw.items() if k not in bad} for raw in st.epochs]
    return replace(st, params=params, epochs=epochs), {*dropped, *bad}


def timestamp(seconds: Any) -> dt.datetime | None:
    """A UTC time from Unix seconds; None when absent, not finite or out of range."""
    f = number(seconds)
    if f is None or not math.isfinite(f):
        return None
    try:
        return dt.datetime.fromtimestamp(f, tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
