"""`batchlab import ray-tune DIR`: Ray Tune result folders, read from their files (no Ray).

DIR is an experiment folder (`<storage_path>/<name>/`, holding one folder per trial) or any
folder above some. A trial folder is one holding `result.json` (one JSON object per
reported iteration) or `progress.csv` (the same as CSV); its hyperparameters are
`params.json` (else the `config` of its results); `error.txt` marks a failed trial. An
iteration's `epoch` metric numbers the epoch (else `training_iteration`); Ray's
`time_this_iter_s` / `time_total_s` are the epoch times, its `timestamp`, `hostname` and
`time_total_s` the trial's times and host. A trial's key is `<experiment folder>/<Ray trial
id>`, so importing the same study from its folder or from one above gives the same trials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warehouse.importers import SourceTrial, timestamp
from warehouse.importers.reading import ImportError_, inside, read_csv, read_json, read_text

# Ray's bookkeeping fields of a result: not metrics of the trial.
_BOOKKEEPING = {
    "timestamp",
    "checkpoint_dir_name",
    "should_checkpoint",
    "done",
    "trial_id",
    "date",
    "pid",
    "hostname",
    "node_ip",
    "config",
    "time_since_restore",
    "iterations_since_restore",
    "experiment_tag",
    "timesteps_total",
    "episodes_total",
    "timesteps_since_restore",
}


def _results(trial_dir: Path, root: Path) -> tuple[list[dict[str, Any]], Path]:
    """The trial's reported results (result.json, else progress.csv) and the file read."""
    rj = trial_dir / "result.json"
    if rj.exists() and rj.stat().st_size:
        out = []
        lines = read_text(rj, root).splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                if n == len(lines):  # a trial still writing its last line
                    break
                raise ImportError_(f"{rj}: line {n} is not JSON ({str(exc)[:200]})") from None
            if not isinstance(value, dict):
                raise ImportError_(f"{rj}: line {n}: {str(value)[:60]!r} is not a JSON object")
            out.append(value)
        return out, rj
    pc = trial_dir / "progress.csv"
    if pc.exists():
        return read_csv(pc, root)[0], pc
    return [], rj


def read(path: str | Path) -> list[SourceTrial]:
    """Every Ray Tune trial under `path`. Files are read only from inside `path`: a link
    that leads out of it is not followed (its trial gets a note, or an error for results)."""
    root = Path(path)
    if not root.is_dir():
        raise ImportError_(f"{root}: not a directory (give a Ray Tune experiment folder)")
    real = root.resolve()
    dirs = sorted({p.parent for pat in ("result.json", "progress.csv") for p in root.rglob(pat)})
    trials = []
    for d in dirs:
        results, source = _results(d, real)
        notes: list[str] = []
        params_file = d / "params.json"
        params: Any = None
        if params_file.exists() and not inside(params_file, real):
            notes.append(f"{params_file} not read: a link out of the imported folder")
        elif params_file.exists():
            params = read_json(params_file, real)
            if not isinstance(params, dict):
                raise ImportError_(f"{params_file}: not a JSON object of hyperparameters")
        if params is None:
            config = results[0].get("config") if results else None
            params = config if isinstance(config, dict) else {}
        epochs = []
        for r in results:
            row = {k: v for k, v in r.items() if k not in _BOOKKEEPING and not isinstance(v, dict)}
            if "epoch" not in row and "training_iteration" in row:
                row["epoch"] = row["training_iteration"]
            row.pop("training_iteration", None)
            epochs.append(row)
        last = results[-1] if results else {}
        ray_id = str(last.get("trial_id") or d.name)
        err = d / "error.txt"
        error = None
        if err.exists() and not inside(err, real):
            notes.append(f"{err} not read: a link out of the imported folder")
            error = "failed (error.txt)"
        elif err.exists():
            error = read_text(err, real).strip() or "failed (error.txt)"
        info = {
            "file": str(source),
            "host": last.get("hostname") or None,
            "wall_time_s": last.get("time_total_s"),
            "error": error,
        }
        try:
            end = float(last.get("timestamp"))
            info["finished_at"] = timestamp(end)
            info["started_at"] = timestamp(end - float(last.get("time_total_s")))
        except (TypeError, ValueError, OverflowError):
            pass
        trials.append(SourceTrial(f"{d.parent.name}/{ray_id}", params, epochs, info, notes))
    return trials


def default_experiment(path: str | Path) -> str:
    return Path(path).resolve().name
