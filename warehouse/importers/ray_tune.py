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

import csv
import json
from pathlib import Path
from typing import Any

from warehouse.importers import ImportError_, SourceTrial, timestamp

# Ray's bookkeeping fields of a result: not metrics of the trial.
_BOOKKEEPING = {
    "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "trial_id", "date",
    "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "experiment_tag", "timesteps_total", "episodes_total", "timesteps_since_restore",
}  # fmt: skip


def _results(trial_dir: Path) -> list[dict[str, Any]]:
    rj = trial_dir / "result.json"
    if rj.exists() and rj.stat().st_size:
        out = []
        for n, line in enumerate(rj.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if n == len(rj.read_text().splitlines()):  # a trial still writing its last line
                    break
                raise ImportError_(f"{rj}: line {n} is not JSON ({exc})") from exc
        return out
    pc = trial_dir / "progress.csv"
    if pc.exists():
        with pc.open(newline="") as fh:
            return list(csv.DictReader(fh))
    return []


def read(path: str | Path) -> list[SourceTrial]:
    """Every Ray Tune trial under `path`."""
    root = Path(path)
    if not root.is_dir():
        raise ImportError_(f"{root}: not a directory (give a Ray Tune experiment folder)")
    dirs = sorted({p.parent for pat in ("result.json", "progress.csv") for p in root.rglob(pat)})
    trials = []
    for d in dirs:
        results = _results(d)
        params_file = d / "params.json"
        if params_file.exists():
            params = json.loads(params_file.read_text())
        elif results and isinstance(results[0].get("config"), dict):
            params = results[0]["config"]
        else:
            params = {}
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
        info = {
            "host": last.get("hostname") or None,
            "wall_time_s": last.get("time_total_s"),
            "error": err.read_text().strip() or "failed (error.txt)" if err.exists() else None,
        }
        try:
            end = float(last.get("timestamp"))
            info["finished_at"] = timestamp(end)
            info["started_at"] = timestamp(end - float(last.get("time_total_s")))
        except (TypeError, ValueError):
            pass
        trials.append(SourceTrial(f"{d.parent.name}/{ray_id}", params, epochs, info))
    return trials


def default_experiment(path: str | Path) -> str:
    return Path(path).resolve().name
