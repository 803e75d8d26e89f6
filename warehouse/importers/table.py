"""`batchlab import csv FILE --map ...`: a CSV export of a sweep (W&B, MLflow, a spreadsheet).

One row per run and epoch. The run of a row is its `run` column (`--map run=NAME`; else
`run_id`, `run_name`, `Name`, `name`, `trial_id` or `trial`); without one, every distinct
combination of the hyperparameter columns found (batch size, lr, seed, ...) is a run. A
run's hyperparameters are the values of those columns in its first row; every other column
is a per-epoch metric (`epoch` numbers the epochs, else the rows' order in the file).
"""

from __future__ import annotations

from pathlib import Path

from warehouse.importers import RUN_FIELD, TRIAL_FIELDS, SourceTrial
from warehouse.importers.reading import ImportError_, read_csv


def read(path: str | Path, mapping: dict[str, str] | None = None) -> list[SourceTrial]:
    f = Path(path)
    if not f.is_file():
        raise ImportError_(f"{f}: not a file (give a CSV file)")
    mapping = mapping or {}
    rows, cols = read_csv(f)
    if not rows:
        raise ImportError_(f"{f}: no rows")
    run_col = next((c for c in (mapping.get("run"), *RUN_FIELD) if c and c in cols), None)
    if "run" in mapping and mapping["run"] not in cols:
        raise ImportError_(f"--map run={mapping['run']}: no such column; columns: {cols}")
    param_cols = []
    for fld, names in TRIAL_FIELDS.items():
        cands = (mapping[fld], *names) if fld in mapping else names
        col = next((c for c in cands if c in cols), None)
        if fld in mapping and mapping[fld] not in cols:
            raise ImportError_(
                f"--map {fld}={mapping[fld]}: no such column in {f.name}; columns: {cols}"
            )
        if col:
            param_cols.append(col)
    runs: dict[str, list[dict]] = {}
    params: dict[str, dict] = {}
    for r in rows:
        if run_col:
            run = r[run_col]
        else:
            run = ",".join(f"{c}={r[c]}" for c in param_cols) or "run"
        runs.setdefault(run, []).append(r)
        params.setdefault(run, {c: r[c] for c in param_cols if r.get(c) not in (None, "")})
    skip = {run_col, *param_cols}
    trials = []
    for run, rs in runs.items():
        epochs = [{k: v for k, v in r.items() if k not in skip} for r in rs]
        trials.append(SourceTrial(f"{f.name}/{run}", params[run], epochs, {"file": str(f)}))
    return trials


def default_experiment(path: str | Path) -> str:
    return Path(path).stem
