"""Warehouse checks: corrupt files (found, reported, moved aside) and integrity of the rows.

- `find_corrupt_files(root)`: every Parquet file under `tables/` that is not readable, with
  the reason (cheap: magic bytes and footer length; `deep=True` also parses the footer and
  reads every page);
- `quarantine_corrupt(root)`: moves those files to `<root>/quarantine/<same path>` with a
  `.reason.txt` beside each; readers (`warehouse.db.connect`) already skip them;
- `check_warehouse(root)`: everything above plus the row rules: every per-trial table row
  belongs to a committed trial, no duplicate rows per natural key, known schema versions,
  no stale compacted parts. `batchlab check` prints it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pyarrow.parquet as pq

from warehouse.db import connect
from warehouse.layout import Layout, TableFile
from warehouse.schemas import KEY_COLUMN, SCHEMA_VERSION, SCHEMA_VERSION_KEY, SCHEMAS, TRIAL_TABLES

# The columns that identify one row of each table (a duplicate is a bug or a double write).
NATURAL_KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("experiment", "trial_id"),
    "epochs": ("experiment", "trial_id", "epoch"),
    "steps": ("experiment", "trial_id", "step"),
    "layers": ("experiment", "trial_id", "epoch", "layer"),
    # keskar_sharpness gives one row per eps: the settings tell them apart
    "probes": ("experiment", "trial_id", "epoch", "probe", "settings_json"),
    "analyses": ("experiment", "analysis_id"),
}


@dataclass(frozen=True)
class Problem:
    """One finding of `check_warehouse`."""

    kind: str  # corrupt_file | orphan_rows | duplicate_rows | schema_version | key_mismatch | stale_part
    where: str  # a file path, or "<table>/experiment=<exp>"
    detail: str  # what is wrong and what to do

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


@dataclass(frozen=True)
class CorruptFile:
    path: str
    reason: str
    moved_to: str | None = None  # set by quarantine_corrupt


def _all_files(layout: Layout) -> list[TableFile]:
    out = []
    for t in SCHEMAS:
        tf = layout.table_files(t)
        out += [*tf.per_trial, *tf.parts, *tf.stale_parts]
    return out


def _deep_problem(layout: Layout, f: TableFile) -> str | None:
    try:
        pq.read_table(f.path, filesystem=layout.fs)
    except Exception as exc:  # any decoding error is the finding itself
        return f"unreadable: {type(exc).__name__}: {exc}"
    return None


def find_corrupt_files(
    root: str | Layout | None = None, *, deep: bool = False
) -> list[CorruptFile]:
    """Parquet files under `tables/` that cannot be read, with the reason."""
    layout = root if isinstance(root, Layout) else Layout.open(root)
    out = []
    for f in _all_files(layout):
        why = layout.parquet_problem(f.path, f.size)
        if why is None and deep:
            why = _deep_problem(layout, f)
        if why:
            out.append(CorruptFile(f.path, why))
    return out


def quarantine_corrupt(
    root: str | Layout | None = None, *, deep: bool = False
) -> list[CorruptFile]:
    """Move every corrupt file to `<root>/quarantine/...`; returns them with their new path."""
    layout = root if isinstance(root, Layout) else Layout.open(root)
    return [
        CorruptFile(c.path, c.reason, layout.quarantine(c.path, c.reason))
        for c in find_corrupt_files(layout, deep=deep)
    ]


def check_warehouse(root: str | Layout | None = None, *, deep: bool = False) -> list[Problem]:
    """Every problem found under `root` (empty when the warehouse is sound).

    `deep` also reads every file in full and checks that each per-trial file holds only
    rows of the key its name gives and records a schema version this code knows."""
    layout = root if isinstance(root, Layout) else Layout.open(root)
    problems = [
        Problem(
            "corrupt_file",
            c.path,
            f"{c.reason}; skipped by readers; `batchlab check --quarantine` moves it aside",
        )
        for c in find_corrupt_files(layout, deep=deep)
    ]
    bad = {p.where for p in problems}
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # corrupt files: reported above
        con = connect(layout)
    for t in TRIAL_TABLES:
        for exp, n_rows, n_trials, example in con.execute(
            f"""
            SELECT experiment, count(*), count(DISTINCT trial_id), min(trial_id)
            FROM {t}_raw r ANTI JOIN trials_raw c USING (experiment, trial_id)
            GROUP BY experiment ORDER BY experiment
            """
        ).fetchall():
            problems.append(
                Problem(
                    "orphan_rows",
                    f"{t}/experiment={exp}",
                    f"{n_rows} rows of {n_trials} trials without a committed trials row "
                    f"(e.g. {example}): a trial being written right now, or a write that "
                    "crashed before its commit; readers ignore them; re-run the grid",
                )
            )
    for t, cols in NATURAL_KEYS.items():
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
    if deep:
        problems += _deep_file_checks(layout, bad)
    return problems


def _deep_file_checks(layout: Layout, bad: set[str]) -> list[Problem]:
    out = []
    for t in SCHEMAS:
        tf = layout.table_files(t)
        key = KEY_COLUMN[t]
        for f in [*tf.per_trial, *tf.parts]:
            if f.path in bad:
                continue
            meta = pq.read_metadata(f.path, filesystem=layout.fs)
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
                col = pq.read_table(f.path, columns=[key], filesystem=layout.fs).column(key)
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
