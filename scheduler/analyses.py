"""Loss-landscape analyses declared in grid.yaml and scheduled after the trials they need.

    analyses:
      - kind: interpolate            # F-10: loss along a*theta_large + (1-a)*theta_small
        name: bs32-vs-bs256
        small: {batch_size: 32}      # trials matching this ...
        large: {batch_size: 256}     # ... paired with the trial equal in everything else
        alpha_range: [-1.0, 2.0]
        n_points: 25
      - kind: surface                # F-12: filter-normalized 2-D surface around a minimizer
        name: surfaces
        select: {batch_size: [32, 256]}
        n_points: 51
        span: 1.0
        direction_seed: 0

Selections use the grid's axis names (scheduler/spec_axes.py AXIS_PATHS). An interpolation pairs
each trial matching `small` with the trial whose config equals it after applying `large`
(same seed, hence the same initial weights). Each analysis gets a stable id (hash of its kind,
settings and input trial ids), so a re-run skips analyses already stored; an analysis whose
inputs diverged or failed is stored as `skipped` with the reason.

Dependency: the runner submits analyses only after every trial of the run has ended (a
barrier), so an analysis never starts before its inputs are committed; the `analyses` row
records started_at, which the tests compare with the input trials' finished_at.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from scheduler.spec_axes import AXIS_PATHS
from warehouse.layout import Layout
from warehouse.store import write_rows
from workers.checkpoint_io import TrialCheckpoints
from workers.config import TrialConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Scalar = bool | int | float | str


class InterpolateSpec(_Strict):
    kind: Literal["interpolate"]
    name: str = "interpolate"
    small: dict[str, Scalar]
    large: dict[str, Scalar]
    alpha_range: tuple[float, float] = (-1.0, 2.0)

    @field_validator("alpha_range", mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v  # YAML and JSON give lists

    n_points: Annotated[int, Field(ge=2, le=1001)] = 25
    # Examples of each split evaluated at every point (None = the whole split).
    n_examples: PositiveInt | None = None

    @model_validator(mode="after")
    def _check(self) -> InterpolateSpec:
        _check_axes(self.small, "small")
        _check_axes(self.large, "large")
        if set(self.small) != set(self.large):
            raise ValueError(
                f"small and large must set the same axes, got {sorted(self.small)} and {sorted(self.large)}"
            )
        if self.alpha_range[0] >= self.alpha_range[1]:
            raise ValueError(f"alpha_range must be increasing, got {list(self.alpha_range)}")
        return self


class SurfaceSpec(_Strict):
    kind: Literal["surface"]
    name: str = "surface"
    # Axis -> value or list of values; trials matching every entry get a surface.
    select: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    n_points: Annotated[int, Field(ge=2, le=201)] = 51
    span: Annotated[float, Field(gt=0)] = 1.0
    direction_seed: int = 0
    n_examples: PositiveInt | None = None

    @model_validator(mode="after")
    def _check(self) -> SurfaceSpec:
        _check_axes(self.select, "select")
        return self


AnalysisSpec = Annotated[InterpolateSpec | SurfaceSpec, Field(discriminator="kind")]


def _check_axes(d: dict[str, Any], field: str) -> None:
    bad = sorted(set(d) - set(AXIS_PATHS))
    if bad:
        raise ValueError(f"{field}: unknown axis {bad}; axes: {', '.join(AXIS_PATHS)}")


def _axis_value(cfg: TrialConfig, axis: str) -> Any:
    v: Any = cfg
    for part in AXIS_PATHS[axis].split("."):
        v = getattr(v, part)
    return v


def _matches(cfg: TrialConfig, sel: dict[str, Any]) -> bool:
    for axis, want in sel.items():
        have = _axis_value(cfg, axis)
        wants = want if isinstance(want, list) else [want]
        if not any(_equal(have, w) for w in wants):
            return False
    return True


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))
        except (TypeError, ValueError):
            return False
    return a == b


def _with(cfg: TrialConfig, values: dict[str, Any]) -> TrialConfig:
    """`cfg` with the given axes set (validated)."""
    d = cfg.model_dump(mode="json")
    for axis, value in values.items():
        *parents, leaf = AXIS_PATHS[axis].split(".")
        target = d
        for p in parents:
            target = target[p]
        target[leaf] = value
    return TrialConfig.model_validate(d).canonical()


@dataclass(frozen=True)
class PlannedAnalysis:
    analysis_id: str
    kind: str
    name: str
    trials: tuple[TrialConfig, ...]  # interpolate: (small, large); surface: (trial,)
    settings: dict[str, Any]


def plan_analyses(
    specs: list[InterpolateSpec | SurfaceSpec], trials: list[TrialConfig]
) -> list[PlannedAnalysis]:
    """Resolve selections against the grid's trials into concrete analyses."""
    by_id = {t.trial_id: t for t in trials}
    out: list[PlannedAnalysis] = []
    for spec in specs:
        settings = spec.model_dump(
            mode="json", exclude={"kind", "name", "small", "large", "select"}
        )
        if isinstance(spec, InterpolateSpec):
            for t in trials:
                if not _matches(t, spec.small):
                    continue
                partner = by_id.get(_with(t, spec.large).trial_id)
                if partner is None:
                    continue
                out.append(_planned("interpolate", spec.name, (t, partner), settings))
        else:
            for t in trials:
                if _matches(t, spec.select):
                    out.append(_planned("surface", spec.name, (t,), settings))
    return out


def _planned(
    kind: str, name: str, trials: tuple[TrialConfig, ...], settings: dict[str, Any]
) -> PlannedAnalysis:
    key = json.dumps(
        {"kind": kind, "settings": settings, "trials": [t.trial_id for t in trials]}, sort_keys=True
    )
    aid = hashlib.sha256(key.encode()).hexdigest()[:16]
    return PlannedAnalysis(aid, kind, name, trials, settings)


def stored_analyses(layout: Layout, experiment: str) -> dict[str, str]:
    """analysis_id -> status of the analyses already stored."""
    import io

    import pyarrow.parquet as pq

    out = {}
    for path in layout.list_files("analyses", experiment):
        data = layout.get_bytes(path)
        if data is None:
            continue
        try:
            t = pq.read_table(io.BytesIO(data), columns=["analysis_id", "status"])
        except Exception:
            continue
        out.update(
            zip(t.column("analysis_id").to_pylist(), t.column("status").to_pylist(), strict=True)
        )
    return out


def _subset(x, y, n: int | None):
    if n is None or n >= x.shape[0]:
        return x, y
    return x[:n], y[:n]


def execute_analysis(
    analysis: dict[str, Any],
    experiment: str,
    root: str,
    *,
    code_version: str,
    device: str = "auto",
    data_dir: str | None = None,
    code_dir: str | None = None,
    input_status: dict[str, str] | None = None,
    node_id: str = "",
    ray_version: str = "",
) -> dict[str, Any]:
    """Run one planned analysis (as plain data) and write its rows; never raises for bad inputs."""
    import torch

    from workers.data import load_dataset_cached
    from workers.landscape import interpolation_curve, surface
    from workers.losses import loss_of
    from workers.models import build_model
    from workers.train import provenance, resolve_device
    from workers.user import use_code_dir

    use_code_dir(code_dir)

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    layout = Layout.open(root)
    cfgs = [TrialConfig.model_validate_json(c) for c in analysis["trials"]]
    ids = [c.trial_id for c in cfgs]
    row: dict[str, Any] = {
        "experiment": experiment,
        "analysis_id": analysis["analysis_id"],
        "kind": analysis["kind"],
        "name": analysis["name"],
        "trial_ids": json.dumps(ids),
        "settings_json": json.dumps(analysis["settings"], sort_keys=True),
        "code_version": code_version,
        "started_at": started,
        "schema_version": 1,
    }

    def finish(status: str, reason: str | None = None, device_name: str = "") -> dict[str, Any]:
        row.update(
            status=status,
            reason=reason,
            wall_time_s=time.perf_counter() - t0,
            device_name=device_name,
            finished_at=dt.datetime.now(dt.timezone.utc),
        )
        write_rows(layout, "analyses", experiment, analysis["analysis_id"], [row])
        return {"analysis_id": analysis["analysis_id"], "status": status, "reason": reason}

    bad = {tid: s for tid, s in (input_status or {}).items() if s != "completed"}
    if bad:
        why = ", ".join(f"trial {tid} is {s or 'missing'}" for tid, s in bad.items())
        return finish("skipped", f"inputs not usable: {why}")
    states = [TrialCheckpoints(layout, experiment, tid).load("final") for tid in ids]
    if any(s is None for s in states):
        missing = [tid for tid, s in zip(ids, states, strict=True) if s is None]
        return finish("skipped", f"no final checkpoint for {missing} (measure.checkpoints off?)")
    dev = resolve_device(device)
    try:
        data = load_dataset_cached(cfgs[0].dataset, dev, data_dir)
        lossf = loss_of(cfgs[0])  # the trials' loss (the pairing requires it to be shared)
        fns = {} if lossf.is_default else {"loss_fn": lossf.fn, "acc_fn": lossf.accuracy}
        torch.manual_seed(0)
        model = build_model(cfgs[0].model, data.input_shape, data.num_classes).to(dev)
        st = analysis["settings"]
        splits = {
            "train": _subset(data.x_train, data.y_train, st.get("n_examples")),
            "val": _subset(data.x_val, data.y_val, st.get("n_examples")),
        }
        states = [{k: v.to(dev) for k, v in s.items()} for s in states]
        if analysis["kind"] == "interpolate":
            lo, hi = st["alpha_range"]
            rows = interpolation_curve(
                model,
                states[0],
                states[1],
                splits,
                alpha_min=lo,
                alpha_max=hi,
                n_points=st["n_points"],
                **fns,
            )
            tid_b = ids[1]
        else:
            rows = surface(
                model,
                states[0],
                splits,
                seed=st["direction_seed"],
                n_points=st["n_points"],
                span=st["span"],
                **fns,
            )
            tid_b = None
    except Exception as exc:
        return finish("failed", f"{type(exc).__name__}: {exc}")
    out = [
        {
            "experiment": experiment,
            "analysis_id": analysis["analysis_id"],
            "kind": analysis["kind"],
            "trial_id": ids[0],
            "trial_id_b": tid_b,
            "alpha": r["alpha"],
            "beta": r.get("beta"),
            "split": r["split"],
            "loss": r["loss"],
            "acc": r["acc"],
            "code_version": code_version,
        }
        for r in rows
    ]
    write_rows(layout, "landscapes", experiment, analysis["analysis_id"], out)
    return finish("completed", None, provenance(dev)["device_name"])


def run_analyses(spec, layout: Layout, *, code_version: str, device: str, out) -> dict[str, int]:
    """Plan the grid's analyses, skip stored ones, run the rest as Ray tasks. Returns counts."""
    import scheduler.ray_backend as backend
    from warehouse.store import read_trial_rows

    planned = plan_analyses(list(spec.analyses), spec.trials())
    done = stored_analyses(layout, spec.experiment)
    todo = [a for a in planned if done.get(a.analysis_id) not in ("completed", "skipped")]
    print(
        f"analyses: {len(planned)} planned, {len(planned) - len(todo)} already stored, {len(todo)} to run",
        file=out,
    )
    if not todo:
        return {}
    status = {r["trial_id"]: r["status"] for r in read_trial_rows(layout, spec.experiment)}
    r = spec.resources
    calls = [
        (
            (
                execute_analysis,
                {
                    "analysis_id": a.analysis_id,
                    "kind": a.kind,
                    "name": a.name,
                    "settings": a.settings,
                    "trials": [t.model_dump_json() for t in a.trials],
                },
                spec.experiment,
                layout.root,
            ),
            {
                "code_version": code_version,
                "device": device,
                "data_dir": spec.data_dir,
                "code_dir": spec.code_dir,
                "input_status": {t.trial_id: status.get(t.trial_id, "missing") for t in a.trials},
            },
        )
        for a in todo
    ]
    results = backend.run_all(
        backend.ray_task,
        calls,
        num_cpus=r.cpus_per_trial,
        num_gpus=r.gpus_per_trial,
        max_retries=r.max_retries,
    )
    counts: dict[str, int] = {}
    for res in results:
        counts[res["status"]] = counts.get(res["status"], 0) + 1
        if res["status"] != "completed":
            print(f"  analysis {res['analysis_id']} {res['status']}: {res['reason']}", file=out)
    return counts
