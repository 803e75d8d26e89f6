"""Warehouse checks: corrupt files (found, reported, moved aside), integrity of the rows, and
self-healing: a trial whose rows were lost is invalidated so the next run re-runs it.

- `find_corrupt_files(root)`: every Parquet file under `tables/` that is not readable, with
  the reason (cheap: magic bytes and footer length; `deep=True` also parses the footer and
  reads every page);
- `quarantine_corrupt(root)`: moves those files to `<root>/quarantine/<same path>` with a
  `.reason.txt` beside each, and **invalidates the trials they held rows of**
  (`invalidate_trials`); readers (`warehouse.db.connect`) already skip the cheap-check ones;
- `repair(root)` (`batchlab check --repair`): a deep search, the quarantine above, and the
  invalidation of committed trials whose epochs rows are missing (a table file deleted);
- `check_warehouse(root)`: everything above plus the row rules: every per-trial table row
  belongs to a committed trial, no duplicate rows per natural key, known schema versions,
  no stale compacted parts, no committed trial without its epochs rows, and how many
  invalidated trials still wait for a re-run. `batchlab check` prints it. It never raises: a
  file DuckDB cannot read (damaged in its middle, magic bytes intact: the cheap check passes)
  makes it read every file in full to find it, then check the rest without it.

Invalidating a trial (`invalidate_trials`): a record `<root>/quarantine/invalidated/
experiment=<e>/<trial_id>.json` (why, which files) is written, then the trial's `trials` row
is replaced by an empty `trials` file (a tombstone: it shadows the trial's row in a compacted
part too) in one atomic rename. The trial is then not committed: readers drop its other rows
(the views semi-join on `trials`), `scheduler.runner.plan` puts it back into the run, and
its re-run replaces every file of it. Until then `check_warehouse` reports it as incomplete
(`incomplete_trials`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from warehouse.db import define_views, snapshot
from warehouse.invalidation import (
    DONE_STATUSES,
    Invalidated,
    committed_statuses,
    incomplete_trials,
    invalidate_trials,
    missing_epochs,
    orphan_rows,
)
from warehouse.layout import Layout, TableFile, TableFiles
from warehouse.schemas import (
    KEY_COLUMN,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    SCHEMAS,
    TRIAL_TABLES,
)

# The columns that identify one row of each table (a duplicate is a bug or a double write).
NATURAL_KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("experiment", "trial_id"),
    "epochs": ("experiment", "trial_id", "epoch"),
    "steps": ("experiment", "trial_id", "step"),
    "layers": ("experiment", "trial_id", "epoch", "layer"),
    # keskar_sharpness gives one row per eps: the settings tell them apart
    "probes": ("experiment", "trial_id", "epoch", "probe", "settings_json"),
    "analyses": ("experiment", "analysis_id"),
    "metrics": ("experiment", "trial_id", "epoch", "step", "name"),  # user metrics
}


@dataclass(frozen=True)
class Problem:
    """One finding of `check_warehouse`."""

    # corrupt_file | orphan_rows | duplicate_rows | schema_version | key_mismatch | stale_part
    # | missing_rows | incomplete_trials | unreadable | no_storage
    kind: str
    where: str  # a file path, or "<table>/experiment=<exp>"
    detail: str  # what is wrong and what to do

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


@dataclass(frozen=True)
class CorruptFile:
    path: str
    reason: str
    moved_to: str | None = None  # set by quarantine_corrupt


@dataclass
class RepairReport:
    """What `repair` / `quarantine_corrupt` did."""

    quarantined: list[CorruptFile] = field(default_factory=list)
    invalidated: list[Invalidated] = field(default_factory=list)
    incomplete: list[Invalidated] = field(default_factory=list)  # all waiting for a re-run

    def summary(self) -> str:
        lines = [f"quarantined {c.path} -> {c.moved_to}: {c.reason}" for c in self.quarantined]
        lines += [
            f"invalidated trial {i.trial_id} ({i.experiment}): {i.reason}" for i in self.invalidated
        ]
        exps = sorted({i.experiment for i in self.incomplete})
        lines.append(
            f"{len(self.incomplete)} trials incomplete: re-run their grids "
            f"(experiments: {', '.join(exps)}) with `batchlab run GRID.yaml` to restore them"
            if self.incomplete
            else "no trial is incomplete"
        )
        return "\n".join(lines)


def _layout(root: str | Layout | None) -> Layout:
    return root if isinstance(root, Layout) else Layout.open(root)


def _one_line(exc: BaseException) -> str:
    lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _all_files(layout: Layout) -> list[TableFile]:
    out = []
    for t in SCHEMAS:
        tf = layout.table_files(t)
        out += [*tf.per_trial, *tf.parts, *tf.stale_parts]
    return out


def _deep_problem(layout: Layout, f: TableFile) -> str | None:
    try:
        pq.read_table(f.path, filesystem=layout.fs)
    except FileNotFoundError:
        return None  # gone since the listing (a compaction, a re-run)
    except Exception as exc:  # any decoding error is the finding itself
        return f"unreadable: {_one_line(exc)}"
    return None


def _cheap_problem(layout: Layout, f: TableFile) -> str | None:
    try:
        return layout.parquet_problem(f.path, f.size)
    except Exception as exc:  # permissions, I/O errors: the finding itself
        return f"unreadable: {_one_line(exc)}"


def find_corrupt_files(
    root: str | Layout | None = None, *, deep: bool = False
) -> list[CorruptFile]:
    """Parquet files under `tables/` that cannot be read, with the reason."""
    layout = _layout(root)
    out = []
    for f in _all_files(layout):
        why = _cheap_problem(layout, f)
        if why is None and deep:
            why = _deep_problem(layout, f)
        if why:
            out.append(CorruptFile(f.path, why))
    return out


def _connect_without(layout: Layout, bad: dict[str, str]) -> duckdb.DuckDBPyConnection:
    """The warehouse views over every file except `bad` ({path: reason})."""
    snap = snapshot(layout, validate=False)
    for t, tf in snap.files.items():
        snap.files[t] = TableFiles(
            t,
            [f for f in tf.per_trial if f.path not in bad],
            [f for f in tf.parts if f.path not in bad],
            tf.stale_parts,
        )
    snap.corrupt = sorted(bad.items())
    con = duckdb.connect(":memory:")
    try:
        define_views(con, layout, snap)
    except BaseException:
        con.close()
        raise
    return con


def _scan(layout: Layout, deep: bool, rows, *args) -> tuple[list[CorruptFile], object, str | None]:
    """Find the corrupt files and run `rows(con, *args)` over the views without them.

    A file that passes the cheap check but that DuckDB cannot read (damaged in its middle)
    makes the first attempt fail: then every file is read in full to find it, and the rows
    are checked again without it. Returns (corrupt files, rows' result or None, the error
    when even that failed)."""
    corrupt = find_corrupt_files(layout, deep=deep)
    for attempt in range(2):
        try:
            con = _connect_without(layout, {c.path: c.reason for c in corrupt})
            try:
                return corrupt, rows(con, *args), None
            finally:
                con.close()
        except Exception as exc:
            error = _one_line(exc)
            if attempt == 0:
                known = {c.path for c in corrupt}
                corrupt += [c for c in find_corrupt_files(layout, deep=True) if c.path not in known]
    return corrupt, None, error


def _trials_of(layout: Layout, c: CorruptFile, table: str) -> list[str]:
    """The trial ids a quarantined file held rows of: its name, or (a compacted part) its
    trial_id column when that is still readable."""
    name = c.path.rsplit("/", 1)[1].removesuffix(".parquet")
    if not name.startswith("part-g"):
        return [name]
    if table not in ("trials", *TRIAL_TABLES):
        return []
    try:
        col = pq.read_table(c.moved_to, columns=["trial_id"], filesystem=layout.fs)
        return sorted(set(col.column("trial_id").to_pylist()) - {None})
    except Exception:
        return []  # unreadable: its trials show up as orphans or missing epochs below


def _heal(layout: Layout, corrupt: list[CorruptFile], missing: bool) -> RepairReport:
    """Quarantine `corrupt`, invalidate the trials they held rows of (and, with `missing`,
    committed trials without epochs rows), plus trials left orphaned by the quarantine."""
    report = RepairReport()
    lost_rows: dict[str, set[str]] = {}  # experiment -> trial ids ("*": unknown)
    unknown_parts: set[tuple[str, str]] = set()  # (experiment, table) of unreadable parts
    todo: dict[tuple[str, str], str] = {}
    files: dict[tuple[str, str], list[str]] = {}
    committed: dict[str, dict[str, str]] = {}
    for c in corrupt:
        try:
            moved = layout.quarantine(c.path, c.reason)
        except FileNotFoundError:
            continue  # replaced or removed meanwhile (a re-run, a compaction)
        c = CorruptFile(c.path, c.reason, moved)
        report.quarantined.append(c)
        rel = c.path[len(layout.base) + 1 :].split("/")  # tables/<table>/experiment=<e>/<f>
        if len(rel) != 4 or not rel[2].startswith("experiment="):
            continue
        table, exp = rel[1], rel[2].split("=", 1)[1]
        if table == "trials":  # lost trials rows: those trials' other rows are orphans now
            lost_rows.setdefault(exp, set()).update(_trials_of(layout, c, table) or {"*"})
            continue
        if exp not in committed:
            committed[exp] = committed_statuses(layout, exp)
        ids = _trials_of(layout, c, table)
        if not ids and table in TRIAL_TABLES:  # an unreadable part: whose rows it held is
            unknown_parts.add((exp, table))  # unknown; found below by their absence
        for tid in ids:
            if tid in committed[exp]:  # an uncommitted trial lost nothing anyone could see
                todo.setdefault((exp, tid), f"its {table} file was damaged ({c.reason})")
                files.setdefault((exp, tid), []).append(moved)

    def after(con):
        without = {
            (exp, table): {
                tid
                for (tid,) in con.execute(
                    f"SELECT trial_id FROM trials_raw t WHERE experiment = $e AND status IN "
                    f"{DONE_STATUSES} AND NOT EXISTS (SELECT 1 FROM {table}_raw r WHERE "
                    "r.experiment = t.experiment AND r.trial_id = t.trial_id)",
                    {"e": exp},
                ).fetchall()
            }
            for exp, table in unknown_parts
        }
        return orphan_rows(con), missing_epochs(con), without

    _, found, _ = _scan(layout, False, after)
    if found:
        orphans, lost, without = found
        # Conservative: every committed trial left without rows of that table is re-run
        # (one that never wrote such rows is re-run needlessly; none is lost).
        for (exp, table), tids in sorted(without.items()):
            for tid in sorted(tids):
                todo.setdefault((exp, tid), f"its {table} rows were in a damaged compacted file")
        for exp, tid in sorted(orphans):
            if tid in lost_rows.get(exp, ()) or "*" in lost_rows.get(exp, ()):
                todo.setdefault((exp, tid), "its trials row was in a damaged file")
        if missing:
            for exp, tid, what in lost:
                todo.setdefault((exp, tid), f"its rows are missing ({what})")
    report.invalidated = invalidate_trials(layout, todo, files)
    report.incomplete = incomplete_trials(layout)
    return report


def quarantine_corrupt(
    root: str | Layout | None = None, *, deep: bool = False
) -> list[CorruptFile]:
    """Move every corrupt file to `<root>/quarantine/...` and invalidate the trials it held
    rows of (they are re-run by the next `batchlab run`); returns the files with their new
    path. Never raises on a damaged file."""
    layout = _layout(root)
    corrupt, _, _ = _scan(layout, deep, lambda con: None)
    return _heal(layout, corrupt, missing=False).quarantined


def repair(root: str | Layout | None = None) -> RepairReport:
    """`batchlab check --repair`: read every file in full, quarantine the damaged ones,
    invalidate every trial that lost rows (damaged or missing files) so that the next
    `batchlab run` re-runs exactly those trials."""
    layout = _layout(root)
    _storage_problem(layout, raise_=True)
    return _heal(layout, find_corrupt_files(layout, deep=True), missing=True)


def _storage_problem(layout: Layout, *, raise_: bool = False) -> Problem | None:
    if not layout.is_local:
        return None
    base = Path(layout.base)
    what = None
    if not base.exists():
        what = "does not exist (nothing to check; is --storage right?)"
    elif not base.is_dir():
        what = "is a file, not a storage directory"
    if what is None:
        return None
    if raise_:
        raise ValueError(f"storage root {layout.root!r} {what}")
    return Problem("no_storage", layout.root, f"the storage root {what}")


def check_warehouse(root: str | Layout | None = None, *, deep: bool = False) -> list[Problem]:
    """Every problem found under `root` (empty when the warehouse is sound); never raises
    on damaged files (see the module docstring).

    `deep` also reads every file in full and checks that each per-trial file holds only
    rows of the key its name gives and records a schema version this code knows."""
    layout = _layout(root)
    missing_root = _storage_problem(layout)
    if missing_root:
        return [missing_root]
    incomplete = incomplete_trials(layout)
    waiting = {(i.experiment, i.trial_id) for i in incomplete}
    corrupt, rows, error = _scan(layout, deep, _row_problems, waiting)
    problems = [
        Problem(
            "corrupt_file",
            c.path,
            f"{c.reason}; `batchlab check --repair` moves it aside and marks its trials for "
            "a re-run",
        )
        for c in corrupt
    ]
    bad = {c.path for c in corrupt}
    for t in SCHEMAS:
        for f in layout.table_files(t).stale_parts:
            problems.append(
                Problem(
                    "stale_part",
                    f.path,
                    "superseded by a later compaction (ignored by readers); an interrupted "
                    "compaction left it: `batchlab compact` deletes it",
                )
            )
    if error:
        problems.append(
            Problem(
                "unreadable",
                layout.table_root(),
                f"the row checks could not run: {error}; `batchlab check --repair` reads "
                "every file in full and moves damaged ones aside",
            )
        )
    problems += rows or []
    by_exp: dict[str, list[Invalidated]] = {}
    for i in incomplete:
        by_exp.setdefault(i.experiment, []).append(i)
    for exp, items in sorted(by_exp.items()):
        problems.append(
            Problem(
                "incomplete_trials",
                f"trials/experiment={exp}",
                f"{len(items)} trials have no results: their rows were lost and invalidated "
                f"(e.g. {items[0].trial_id}: {items[0].reason}); the next `batchlab run` of "
                "the grid re-runs exactly these trials",
            )
        )
    if deep:
        problems += _deep_file_checks(layout, bad)
    return problems


def _row_problems(con: duckdb.DuckDBPyConnection, waiting: set[tuple[str, str]]) -> list[Problem]:
    problems = []
    for t in TRIAL_TABLES:
        orphans = con.execute(
            f"""
            SELECT experiment, trial_id, count(*) FROM {t}_raw r
            ANTI JOIN trials_raw c USING (experiment, trial_id)
            GROUP BY ALL ORDER BY ALL
            """
        ).fetchall()
        per_exp: dict[str, list[tuple[str, int]]] = {}
        for exp, tid, n in orphans:
            if (exp, tid) not in waiting:  # reported as incomplete trials instead
                per_exp.setdefault(exp, []).append((tid, n))
        for exp, items in per_exp.items():
            problems.append(
                Problem(
                    "orphan_rows",
                    f"{t}/experiment={exp}",
                    f"{sum(n for _, n in items)} rows of {len(items)} trials without a "
                    f"committed trials row (e.g. {items[0][0]}): a trial being written right "
                    "now, or a write that crashed before its commit; readers ignore them; "
                    "re-run the grid",
                )
            )
    for t, cols in NATURAL_KEYS.items():
        if t not in SCHEMAS:
            continue
        keys = ", ".join(cols)
        for exp, n, example in con.execute(
            f"""
            SELECT experiment, sum(n - 1)::BIGINT, min({KEY_COLUMN[t]})
            FROM (SELECT {keys}, count(*) AS n FROM {t}_raw GROUP BY ALL HAVING count(*) > 1)
            GROUP BY experiment ORDER BY experiment
            """
        ).fetchall():
            problems.append(
                Problem(
                    "duplicate_rows",
                    f"{t}/experiment={exp}",
                    f"{n} extra rows share ({keys}) with another row (e.g. {KEY_COLUMN[t]} "
                    f"{example}); every query double counts them",
                )
            )
    for exp, version, n in con.execute(
        """
        SELECT experiment, schema_version, count(*) FROM trials_raw
        WHERE schema_version IS NULL OR schema_version NOT BETWEEN 1 AND $v
        GROUP BY ALL ORDER BY ALL
        """,
        {"v": SCHEMA_VERSION},
    ).fetchall():
        problems.append(
            Problem(
                "schema_version",
                f"trials/experiment={exp}",
                f"{n} trials rows have schema_version {version}; this batchlab knows 1.."
                f"{SCHEMA_VERSION}: upgrade batchlab to read them correctly",
            )
        )
    lost: dict[str, list[tuple[str, str]]] = {}
    for exp, tid, what in missing_epochs(con):
        lost.setdefault(exp, []).append((tid, what))
    for exp, items in lost.items():
        problems.append(
            Problem(
                "missing_rows",
                f"trials/experiment={exp}",
                f"{len(items)} committed trials have fewer rows than they wrote (e.g. "
                f"{items[0][0]}: {items[0][1]}): a table file was deleted or lost; "
                "`batchlab check --repair` invalidates them so the next run re-runs them",
            )
        )
    return problems


def _deep_file_checks(layout: Layout, bad: set[str]) -> list[Problem]:
    out = []
    for t in SCHEMAS:
        tf = layout.table_files(t)
        key = KEY_COLUMN[t]
        for f in [*tf.per_trial, *tf.parts]:
            if f.path in bad:
                continue
            try:
                meta = pq.read_metadata(f.path, filesystem=layout.fs)
            except Exception:  # damaged or gone since: found (or not) by the file checks
                continue
            version = (meta.metadata or {}).get(SCHEMA_VERSION_KEY.encode())
            if version is not None and not 1 <= int(version) <= SCHEMA_VERSION:
                out.append(
                    Problem(
                        "schema_version",
                        f.path,
                        f"written with schema version {int(version)}; this batchlab knows "
                        f"1..{SCHEMA_VERSION}: upgrade batchlab",
                    )
                )
            if f.key:
                try:
                    col = pq.read_table(f.path, columns=[key], filesystem=layout.fs).column(key)
                except Exception:
                    continue
                others = sorted(set(col.to_pylist()) - {f.key})
                if others:
                    out.append(
                        Problem(
                            "key_mismatch",
                            f.path,
                            f"holds rows of {key} {others[:3]} besides its name's {f.key!r}: "
                            "it was written or copied by hand; readers let it shadow "
                            "compacted rows of its name only",
                        )
                    )
    return out
