"""Seeds until decided: add seeds only to the groups whose verdict is still undecided.

`batchlab run grid.yaml --until-decided F-2,F-11 --max-seeds 8`: round 1 runs the grid as
written (its `grid.seed` list is the first seeds of every setting); after each round the
named findings are evaluated on the warehouse (`warehouse.findings.undecided_groups`, the
verdict engine of warehouse/findings/), and the settings of every group that is still
undecided *and that more seeds can decide* (`more_seeds`: tested but not significant, or
short of seeds; not a group that lacks batch sizes, a rule, or trials at convergence) get
`seeds_per_round` more seeds, up to `max_seeds` per setting. It stops when no such group is
left (decided, or undecidable by seeds) or every one is at the cap, and reports the compute
it saved against running every setting of the grid at the cap.

Each round is one `scheduler.runner.run_grid` call over exactly the new trials (a GridSpec
whose trial list is fixed), so the trials, their ids, packing, retries and the warehouse
rows are those of a plain run; a re-run of the same command skips what is stored and goes
on from the warehouse's state. Ray imports stay in runner.py.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydantic import PrivateAttr

from scheduler.runner import RunReport, run_grid
from scheduler.spec import GridSpec
from workers.config import TrialConfig

EXIT_OK, EXIT_TRIALS_FAILED, EXIT_INTERRUPTED = 0, 4, 130  # as batchlab/cli.py


class FixedTrials(GridSpec):
    """A GridSpec whose trials are a given list (one round's new seeds), everything else
    (experiment, resources, analyses, data_dir, code_dir) that of the grid."""

    _fixed: list[TrialConfig] = PrivateAttr(default_factory=list)

    @classmethod
    def of(cls, spec: GridSpec, trials: list[TrialConfig]) -> FixedTrials:
        out = cls.model_construct(**dict(spec))
        out._fixed = list(trials)
        return out

    def trials(self) -> list[TrialConfig]:
        return list(self._fixed)

    def iter_trials(self):
        yield from self._fixed

    @property
    def n_trials(self) -> int:
        return len(self._fixed)


def setting_key(cfg: TrialConfig) -> str:
    """A trial's setting: its config without the seed (the trials one seed axis spans)."""
    d = cfg.model_dump(mode="json")
    d.pop("seed", None)
    return json.dumps(d, sort_keys=True)


def with_seed(cfg: TrialConfig, seed: int) -> TrialConfig:
    return TrialConfig.model_validate({**cfg.model_dump(mode="json"), "seed": seed}).canonical()


@dataclass
class DecideReport:
    experiment: str
    findings: tuple[str, ...]
    max_seeds: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    settings: int = 0  # distinct settings (configs without the seed) of the grid
    trials_used: int = 0  # trials of those settings in the warehouse at the end
    trials_at_cap: int = 0  # settings x max_seeds
    seconds_used: float = 0.0  # sum of wall_time_s of the used trials
    seconds_at_cap: float = 0.0  # estimate: per setting, mean wall_time_s x max_seeds
    undecided: pd.DataFrame = field(default_factory=pd.DataFrame)  # at the end
    stopped: str = ""  # "decided" | "at the cap" | "seeds cannot decide the rest" | ...
    failed: int = 0
    cancelled: bool = False

    @property
    def trials_saved(self) -> int:
        return self.trials_at_cap - self.trials_used

    def describe(self) -> str:
        lines = [
            f"until decided ({', '.join(self.findings)}; at most {self.max_seeds} seeds "
            f"per setting): {len(self.rounds)} round(s), stopped: {self.stopped}"
        ]
        for r in self.rounds:
            lines.append(
                f"  round {r['round']}: {r['trials']} trial(s) run ({r['completed']} completed, "
                f"{r['failed']} failed), seeds {r['seeds']}; undecided after it: "
                f"{r['undecided']} group(s), {r['extendable']} more seeds can decide"
            )
        pct = 100.0 * self.trials_saved / self.trials_at_cap if self.trials_at_cap else 0.0
        lines.append(
            f"compute: {self.trials_used} trials of {self.settings} settings instead of "
            f"{self.trials_at_cap} at the cap ({self.trials_saved} saved, {pct:.0f}%); "
            f"{self.seconds_used:.1f} s of trial wall time instead of ~{self.seconds_at_cap:.1f} s "
            "(the cap estimated from each setting's mean)"
        )
        if not self.undecided.empty:
            for (fid, grp), g in self.undecided.groupby(["id", "group"], sort=True):
                why = "at the seed cap" if g["more_seeds"].any() else "seeds cannot decide it"
                lines.append(f"  still undecided: {fid} [{grp}]: {why}; {g['note'].iloc[0]}")
        return "\n".join(lines)


def _undecided(
    root: str, experiment: str, ids: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(undecided groups, per-trial rows of the findings, trials table) of the experiment."""
    from warehouse import queries as q
    from warehouse.db import connect
    from warehouse.findings import undecided_groups
    from warehouse.findings.data import Data

    con = connect(root)
    try:
        f = q.Filters(experiment=(experiment,))
        und = undecided_groups(con, f, ids)
        per_trial = Data(con, f).trials
        trials = con.execute(
            "SELECT trial_id, config_json, wall_time_s, status FROM trials WHERE experiment = ?",
            [experiment],
        ).fetchdf()
    finally:
        con.close()
    return und, per_trial, trials


def _members(group: pd.Series, per_trial: pd.DataFrame) -> set[str]:
    """The trial ids of one undecided group (its `cols` equal the group's values)."""
    mask = pd.Series(True, index=per_trial.index)
    for c in group["cols"]:
        if c not in per_trial.columns:
            continue
        v = group[c]
        if isinstance(v, float) and math.isnan(v):
            mask &= per_trial[c].isna()
        else:
            mask &= per_trial[c] == v
    return set(per_trial.loc[mask, "trial_id"])


def run_until_decided(
    spec: GridSpec,
    root: str,
    findings: tuple[str, ...],
    max_seeds: int,
    *,
    seeds_per_round: int = 1,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    out=sys.stdout,
    storage_shared: bool | None = None,
) -> DecideReport:
    """Run `spec`, then add seeds to the settings of the still-undecided groups of
    `findings` until decided or `max_seeds` per setting (see the module docstring)."""
    from warehouse.findings import FINDINGS

    known = {f.id for f in FINDINGS}
    if bad := [i for i in findings if i not in known]:
        raise ValueError(f"--until-decided: unknown finding(s) {bad}; known: {sorted(known)}")
    if not findings:
        raise ValueError("--until-decided: name at least one finding, e.g. F-2,F-11")
    first = spec.trials()
    settings: dict[str, TrialConfig] = {}
    seeds: dict[str, set[int]] = {}
    for t in first:
        k = setting_key(t)
        settings.setdefault(k, t)
        seeds.setdefault(k, set()).add(t.seed)
    if max_seeds < max(len(s) for s in seeds.values()):
        raise ValueError(
            f"--max-seeds {max_seeds}: the grid already has "
            f"{max(len(s) for s in seeds.values())} seeds per setting; give at least that"
        )
    if seeds_per_round < 1:
        raise ValueError(f"seeds_per_round: {seeds_per_round}; expected >= 1")
    rep = DecideReport(spec.experiment, tuple(findings), max_seeds, settings=len(settings))
    todo, rnd = list(first), 0
    trials = pd.DataFrame()
    while True:
        rnd += 1
        report: RunReport = run_grid(
            FixedTrials.of(spec, todo) if rnd > 1 else spec,
            root,
            address=address,
            num_cpus=num_cpus,
            progress=progress,
            out=out,
            storage_shared=storage_shared,
        )
        failed = report.counts.get("failed", 0)
        rep.failed += failed
        und, per_trial, trials = _undecided(root, spec.experiment, tuple(findings))
        ext = und[und["more_seeds"]] if not und.empty else und
        rep.rounds.append(
            {
                "round": rnd,
                "trials": report.planned,
                "completed": report.counts.get("completed", 0),
                "failed": failed,
                "seeds": sorted({t.seed for t in todo}),
                "undecided": 0 if und.empty else und.groupby(["id", "group"]).ngroups,
                "extendable": 0 if ext.empty else ext.groupby(["id", "group"]).ngroups,
            }
        )
        rep.undecided = und
        if report.cancelled:
            rep.cancelled, rep.stopped = True, "interrupted"
            break
        if und.empty:
            rep.stopped = "decided"
            break
        if ext.empty:
            rep.stopped = "seeds cannot decide the rest"
            break
        by_id = {r.trial_id: r.config_json for r in trials.itertuples()}
        keys: set[str] = set()
        for _, g in ext.iterrows():
            for tid in _members(g, per_trial):
                if tid in by_id:
                    keys.add(setting_key(TrialConfig.model_validate_json(by_id[tid])))
        keys &= set(settings)
        todo = []
        for k in sorted(keys):
            have = seeds[k]
            nxt, add = max(have) + 1, []
            while len(add) < min(seeds_per_round, max_seeds - len(have)):
                if nxt not in have:
                    add.append(nxt)
                nxt += 1
            have.update(add)
            todo += [with_seed(settings[k], s) for s in add]
        if not todo:
            rep.stopped = "at the cap"
            break
    _compute(rep, settings, seeds, trials)
    return rep


def _compute(rep: DecideReport, settings, seeds, trials: pd.DataFrame) -> None:
    """Trials and wall time used vs every setting at the cap (mean per setting x cap)."""
    ids = {with_seed(settings[k], s).trial_id: k for k in settings for s in seeds[k]}
    per: dict[str, list[float]] = {}
    for r in trials.itertuples():
        if r.trial_id in ids and r.status in ("completed", "diverged"):
            w = float(r.wall_time_s) if r.wall_time_s is not None else math.nan
            per.setdefault(ids[r.trial_id], []).append(w)
    rep.trials_used = sum(len(v) for v in per.values())
    rep.trials_at_cap = len(settings) * rep.max_seeds
    rep.seconds_used = sum(w for v in per.values() for w in v if math.isfinite(w))
    rep.seconds_at_cap = sum(
        rep.max_seeds * sum(fin) / len(fin)
        for v in per.values()
        if (fin := [w for w in v if math.isfinite(w)])
    )


def run_cli(spec: GridSpec, root: str, until: str, max_seeds: int, **kw: Any) -> int:
    """`batchlab run --until-decided IDS --max-seeds N`: run, print the report, exit code
    (130 interrupted, 4 trials failed, else 0; an undecided finding at the cap is a result)."""
    ids = tuple(s.strip() for s in until.split(",") if s.strip())
    rep = run_until_decided(spec, root, ids, max_seeds, **kw)
    print(rep.describe())
    if rep.cancelled:
        return EXIT_INTERRUPTED
    return EXIT_TRIALS_FAILED if rep.failed else EXIT_OK
