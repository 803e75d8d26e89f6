"""Every table's Arrow schema, in one place, with the schema version.

Units are in column names (`_s` seconds, `_mb` mebibytes, `examples_per_s`). Readers use
`union_by_name`, so a file written by an older schema version (fewer columns) still reads:
missing columns come back NULL. Bump SCHEMA_VERSION when a column is added; never rename or
retype a column in place. `docs/warehouse.md` documents every column.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 4  # 2: the trials row's step_* summary columns; 3: user code, `metrics`;
# 4: the trials row's perf_json (the `performance:` settings in effect)
# Every file records the schema version it was written with (Parquet key-value metadata),
# so `warehouse.check` can tell a file from a newer batchlab apart.
SCHEMA_VERSION_KEY = "batchlab.schema_version"
_META = {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION)}

f64, i64, s, b = pa.float64(), pa.int64(), pa.string(), pa.bool_()
ts = pa.timestamp("us", tz="UTC")

# Columns every result table starts with: identity and provenance of the row.
_KEY = [
    pa.field("experiment", s, nullable=False),
    pa.field("trial_id", s, nullable=False),
    pa.field("config_hash", s),
    pa.field("code_version", s),
]


def _step_summary_fields() -> list[pa.Field]:
    """`step_<metric>_<stat>` for update_norm and grad_norm: `n` finite values, mean, min,
    p10, p25, median, p75, p90, max; `step_<metric>_hist_bin` / `_hist_n`: the histogram of
    the positive values in log10 bins of 1/20 decade (bin = floor(20 log10 x))."""
    out = []
    for m in ("update_norm", "grad_norm"):
        out.append(pa.field(f"step_{m}_n", i64))
        for stat in ("mean", "min", "p10", "p25", "median", "p75", "p90", "max"):
            out.append(pa.field(f"step_{m}_{stat}", f64))
        out.append(pa.field(f"step_{m}_hist_bin", pa.list_(i64)))
        out.append(pa.field(f"step_{m}_hist_n", pa.list_(i64)))
    return out


def _epoch_summary_fields() -> list[pa.Field]:
    """`epochs_n`, `at_best_<c>` (the epochs row at best_epoch), `mean_<c>` (mean of the
    finite values over the trial's epochs): see warehouse/summaries.py."""
    at_best = ("train_loss_eval", "train_acc_eval", "val_loss", "val_acc", "elapsed_s")
    at_best += ("dist_from_init",)
    means = ("epoch_time_s", "examples_per_s", "epoch_distance")
    return [
        pa.field("epochs_n", i64),
        *(pa.field(f"at_best_{c}", f64) for c in at_best),
        *(pa.field(f"mean_{c}", f64) for c in means),
    ]


TRIALS = pa.schema(
    [
        *_KEY,
        pa.field("status", s, nullable=False),  # completed | diverged | failed
        pa.field(
            "stop_reason", s
        ),  # max_epochs | early_stopping | target_reached | diverged | error
        pa.field("error", s),  # traceback of a failed trial
        # the grid axes and the settings the app filters on (the full config is config_json)
        pa.field("dataset", s),
        pa.field("model", s),
        pa.field("batchnorm", b),
        pa.field("optimizer", s),
        pa.field("momentum", f64),
        pa.field("batch_size", i64),
        pa.field("lr", f64),  # the grid's lr, before scaling
        pa.field("scaled_lr", f64),  # peak lr after the scaling rule
        pa.field("lr_scaling", s),  # none | linear | sqrt
        pa.field("base_batch_size", i64),
        pa.field("warmup_epochs", f64),
        pa.field("seed", i64),
        pa.field("max_epochs", i64),
        pa.field("n_train", i64),
        pa.field("n_val", i64),
        pa.field("steps_per_epoch", i64),
        pa.field("epochs_run", i64),
        pa.field("steps_run", i64),
        pa.field("best_val_loss", f64),
        pa.field("best_val_acc", f64),
        pa.field("best_epoch", i64),  # -1 when no finite validation loss was seen
        pa.field("best_step", i64),
        pa.field("steps_to_target", i64),  # -1 when the target was not reached / not set
        pa.field("diverged_step", i64),  # -1 when the trial did not diverge
        pa.field("final_train_loss", f64),
        pa.field("final_val_loss", f64),
        pa.field("final_dist_from_init", f64),
        pa.field("train_time_s", f64),  # sum of epoch training times (excl. evaluation)
        pa.field("wall_time_s", f64),  # whole trial in the worker, data loading included
        pa.field("peak_memory_mb", f64),  # CUDA peak allocated; NaN on CPU
        pa.field("resumed_from_epoch", i64),
        pa.field("attempt", i64),  # 1 + retries the scheduler made
        pa.field("pack_id", s),  # trials trained together share it
        pa.field("pack_size", i64),
        pa.field("data_parallel_workers", i64),
        pa.field("config_json", s),  # the full resolved TrialConfig
        pa.field("batchlab_version", s),
        pa.field("torch_version", s),
        pa.field("cuda_version", s),
        pa.field("python_version", s),
        pa.field("ray_version", s),
        pa.field("host", s),
        pa.field("node_id", s),  # Ray node id ("" outside Ray)
        pa.field("device", s),
        pa.field("device_name", s),
        pa.field("started_at", ts),
        pa.field("finished_at", ts),
        pa.field("schema_version", i64),
        # Since schema version 2: summaries of the trial's `steps` and `epochs` rows
        # (warehouse/summaries.py), NULL in older rows.
        *_step_summary_fields(),
        *_epoch_summary_fields(),
        # Since schema version 3: the trial's loss and user code (docs/custom.md); NULL in
        # older rows (which are built-in trials with cross-entropy).
        pa.field("loss", s),  # cross_entropy | bce | mse | an import path
        pa.field("model_factory", s),  # import path of the user's model, NULL for built-ins
        pa.field("dataset_loader", s),  # import path of the user's data set
        pa.field("trainable", s),  # import path of the user's training loop
        pa.field("params_json", s),  # the free hyperparameters (trial.params) as JSON
        pa.field("user_code_hash", s),  # 16 hex digits over the user's sources ("" if none)
        pa.field("user_code_version", s),  # per path: sha256 prefix and installed version
        # Since schema version 4: what of `performance:` (TF32, torch.compile, channels_last,
        # CUDA graphs, cuDNN autotuning) was in effect, and why not (workers/perf.py); NULL
        # in older rows.
        pa.field("perf_json", s),
    ],
    metadata=_META,
)

EPOCHS = pa.schema(
    [
        *_KEY,
        pa.field("epoch", i64, nullable=False),  # 1-based
        pa.field("step", i64),  # optimizer steps done at the end of this epoch
        pa.field("examples_seen", i64),
        pa.field("lr", f64),  # lr of the epoch's last step
        pa.field("train_loss", f64),  # mean of the epoch's mini-batch losses (train mode)
        pa.field("train_loss_eval", f64),  # full training set, eval mode
        pa.field("train_acc_eval", f64),
        pa.field("val_loss", f64),
        pa.field("val_acc", f64),
        pa.field("dist_from_init", f64),  # ||theta_e - theta_0||, trainable params
        pa.field("epoch_distance", f64),  # ||theta_e - theta_{e-1}||
        pa.field("update_norm_p10", f64),
        pa.field("update_norm_median", f64),
        pa.field("update_norm_p90", f64),
        pa.field("update_norm_mean", f64),
        pa.field("update_norm_max", f64),
        pa.field("grad_norm_p10", f64),
        pa.field("grad_norm_median", f64),
        pa.field("grad_norm_p90", f64),
        pa.field("grad_norm_mean", f64),
        pa.field("grad_norm_max", f64),
        pa.field("epoch_time_s", f64),  # training steps of this epoch, synchronized
        pa.field("elapsed_s", f64),  # cumulative training time
        pa.field("examples_per_s", f64),
        # Since schema version 3, system metrics (NULL in older rows; NaN where not measured):
        pa.field("eval_time_s", f64),  # the epoch's evaluations (train-set eval + validation)
        pa.field("probe_time_s", f64),  # probes run after this epoch (probe_every_epochs / end)
        pa.field("rss_mb", f64),  # resident memory of the worker process at the epoch end
        pa.field("gpu_memory_peak_mb", f64),  # CUDA peak allocated during the epoch
        pa.field("gpu_utilization_pct", f64),  # torch.cuda.utilization() at the epoch end
    ],
    metadata=_META,
)

STEPS = pa.schema(
    [
        *_KEY,
        pa.field("step", i64, nullable=False),  # 1-based optimizer step
        pa.field("epoch", i64),
        pa.field("lr", f64),  # lr applied at this step (after scaling, warmup, decay)
        pa.field("update_norm", f64),  # ||theta_{t+1} - theta_t||
        pa.field("grad_norm", f64),  # mini-batch gradient norm before clipping
        pa.field("batch_loss", f64),
    ],
    metadata=_META,
)

LAYERS = pa.schema(
    [
        *_KEY,
        pa.field("epoch", i64, nullable=False),
        pa.field("layer", s, nullable=False),  # parameter name, e.g. "1.weight"
        pa.field("numel", i64),
        pa.field("dist_from_init", f64),
        pa.field("rel_dist_from_init", f64),  # / ||theta_0^l||
        pa.field("param_norm", f64),
    ],
    metadata=_META,
)

PROBES = pa.schema(
    [
        *_KEY,
        pa.field("epoch", i64, nullable=False),  # epoch after which the probe ran
        pa.field("probe", s, nullable=False),  # keskar_sharpness | hessian_top_eig | noise_scale_*
        pa.field("value", f64),
        pa.field("status", s),  # ok | diverged
        pa.field("seconds", f64),
        pa.field("n_examples", i64),
        pa.field("settings_json", s),  # eps, solver, iterations, seed, subset, ...
        # Which weights were measured: final | best (best validation) | epoch (during
        # training, probe_every_epochs); NULL in older rows and in pack members' rows.
        pa.field("measured_at", s),
    ],
    metadata=_META,
)

METRICS = pa.schema(
    [
        *_KEY,
        pa.field("epoch", i64, nullable=False),  # the epoch the value belongs to (1-based)
        pa.field("step", i64),  # optimizer steps done when it was logged
        pa.field("name", s, nullable=False),  # the keyword given to trial.log_epoch/log_step
        pa.field("value", f64),
    ],
    metadata=_META,
)

LANDSCAPES = pa.schema(
    [
        pa.field("experiment", s, nullable=False),
        pa.field("analysis_id", s, nullable=False),
        pa.field("kind", s, nullable=False),  # interpolate | surface
        pa.field("trial_id", s),  # the surface's trial, or the small-batch trial (alpha = 0)
        pa.field("trial_id_b", s),  # the large-batch trial (alpha = 1) of an interpolation
        pa.field("alpha", f64),
        pa.field("beta", f64),  # NULL for 1-D curves
        pa.field("split", s),  # train | val
        pa.field("loss", f64),
        pa.field("acc", f64),
        pa.field("code_version", s),
    ],
    metadata=_META,
)

ANALYSES = pa.schema(
    [
        pa.field("experiment", s, nullable=False),
        pa.field("analysis_id", s, nullable=False),
        pa.field("kind", s, nullable=False),
        pa.field("name", s),
        pa.field("status", s),  # completed | skipped | failed
        pa.field("reason", s),
        pa.field("trial_ids", s),  # JSON list
        pa.field("settings_json", s),
        pa.field("wall_time_s", f64),
        pa.field("device_name", s),
        pa.field("code_version", s),
        pa.field("finished_at", ts),
        pa.field("schema_version", i64),
        pa.field("started_at", ts),  # when the analysis task started (NULL in older files)
    ],
    metadata=_META,
)

# One row per timing probe (workers/timing.py, docs/advise.md): seconds per optimizer step of
# a model alone at one batch size on one device, with the machine's load while timing.
TIMINGS = pa.schema(
    [
        pa.field("experiment", s, nullable=False),
        pa.field("timing_id", s, nullable=False),  # shape key + device + threads
        pa.field("dataset", s),
        pa.field("model", s),
        pa.field("batchnorm", b),
        pa.field("optimizer", s),
        pa.field("batch_size", i64),
        pa.field("shape_key", s),
        pa.field("s_per_step", f64),  # median over the repeats
        pa.field("s_per_step_iqr", f64),  # interquartile range over the repeats
        pa.field("s_per_step_all", s),  # JSON list: each repeat's mean seconds per step
        pa.field("warmup", i64),
        pa.field("steps", i64),  # timed steps per repeat
        pa.field("repeats", i64),
        pa.field("steps_per_epoch", i64),
        pa.field("torch_threads", i64),
        pa.field("cpu_count", i64),
        pa.field("ray_num_cpus", f64),  # CPUs the timing task reserved
        pa.field("load_before", s),  # JSON [1, 5, 15 min] os.getloadavg()
        pa.field("load_after", s),
        pa.field("load1_before", f64),
        pa.field("load1_after", f64),
        pa.field("host", s),
        pa.field("device", s),
        pa.field("device_name", s),
        pa.field("torch_version", s),
        pa.field("cuda_version", s),
        pa.field("code_version", s),
        pa.field("measured_at", ts),
        pa.field("schema_version", i64),
    ],
    metadata=_META,
)

SCHEMAS: dict[str, pa.Schema] = {
    "trials": TRIALS,
    "epochs": EPOCHS,
    "steps": STEPS,
    "layers": LAYERS,
    "probes": PROBES,
    "metrics": METRICS,
    "landscapes": LANDSCAPES,
    "analyses": ANALYSES,
    "timings": TIMINGS,
}
# Tables whose rows belong to one trial: visible only once the trial's `trials` row exists.
TRIAL_TABLES = ("epochs", "steps", "layers", "probes", "metrics")
# The column that names a file's rows: a per-trial file `<key>.parquet` holds only rows with
# this column equal to `<key>` (trial files: the trial id; analyses: the analysis id). Readers
# and compaction use it to let a per-trial file take precedence over compacted rows.
KEY_COLUMN: dict[str, str] = {
    "trials": "trial_id",
    "epochs": "trial_id",
    "steps": "trial_id",
    "layers": "trial_id",
    "probes": "trial_id",
    "metrics": "trial_id",
    "landscapes": "analysis_id",
    "analyses": "analysis_id",
    "timings": "timing_id",
}


def to_table(name: str, rows: Iterable[Mapping[str, Any]], **constants: Any) -> pa.Table:
    """Rows (dicts) -> an Arrow table of `name`'s schema. Keys not in the schema are an
    error (a typo would otherwise silently drop data); missing keys become NULL."""
    schema = SCHEMAS[name]
    rows = list(rows)
    allowed = set(schema.names)
    for r in rows[:1]:
        extra = set(r) - allowed - set(constants)
        if extra:
            raise KeyError(
                f"table {name!r}: unknown columns {sorted(extra)}; allowed: {schema.names}"
            )
    cols = {}
    for f in schema:
        if f.name in constants:
            cols[f.name] = pa.array([constants[f.name]] * len(rows), type=f.type)
        else:
            cols[f.name] = pa.array([r.get(f.name) for r in rows], type=f.type, from_pandas=True)
    return pa.table(cols, schema=schema)
