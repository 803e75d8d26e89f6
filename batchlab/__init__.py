"""batchlab: a distributed experiment scheduler with a results warehouse for batch-size studies.

The public Python API, for scripts and notebooks (docs/api.md)::

    from batchlab import load_spec, run_grid, open_warehouse, trial, __version__

- `load_spec(path, **overrides)`: read and validate a grid.yaml (a `GridSpec`);
- `run_grid(spec_or_path, root)`: run the trials not yet stored under `root` on Ray (a local
  Ray unless `address` or $RAY_ADDRESS names a cluster) and return a `RunReport`;
- `open_warehouse(root)`: a read-only `Warehouse` over a storage root: ad-hoc SQL over the
  views and the named queries;
- `trial`: the running trial, inside your own training loop (`batchlab/trial.py`);
- `__version__`: this package's version.

`import batchlab` is light: it imports neither torch nor Ray nor DuckDB (nor the scheduler,
the workers or the warehouse). Each function imports what it needs when called, and
`batchlab.trial` (which imports torch) is imported on first access (PEP 562).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

# Kept equal to pyproject.toml's [project] version (tests/test_api.py checks it against the
# installed metadata). A literal, so that reading it imports nothing.
__version__ = "0.1.0"

__all__ = [
    "Warehouse",
    "__version__",
    "load_spec",
    "open_warehouse",
    "run_grid",
    "trial",
]

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

    from batchlab import trial
    from scheduler.runner import RunReport
    from scheduler.spec import GridSpec

PathLike = str | os.PathLike[str]


def __getattr__(name: str) -> ModuleType:
    # PEP 562: `batchlab.trial` imports workers.trial_api, hence torch: only when asked for.
    if name == "trial":
        return importlib.import_module("batchlab.trial")
    raise AttributeError(f"module 'batchlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "trial"})


def load_spec(path: PathLike, **overrides: Any) -> GridSpec:
    """Read and validate the grid.yaml at `path` (raises `SpecError` listing every problem).

    Each keyword of `overrides` replaces that top-level key of the file before the grid is
    validated again, e.g. ``load_spec("grid.yaml", max_epochs=2, analyses=[])`` or
    ``grid={"batch_size": [64, 256], "lr": [0.05], "seed": [0]}``. Relative paths
    (`data_dir`, `code_dir`, user code), the file's or an override's, are resolved against
    the file's folder. Keys that
    enter a trial's identity (everything but `experiment`, `description`, `resources`,
    `data_dir`, `code_dir`, `analyses`, `max_trials`, `preflight_timeout_s`) give new trial
    ids, as editing the file would.
    """
    from scheduler.spec import load_spec as _load_spec
    from scheduler.spec import parse_spec

    spec = _load_spec(Path(path))
    if not overrides:
        return spec
    for key in ("data_dir", "code_dir"):  # relative to the file, as in the file
        value = overrides.get(key)
        if (
            isinstance(value, str)
            and "://" not in value
            and not Path(value).expanduser().is_absolute()
        ):
            overrides[key] = str((Path(path).parent / value).resolve())
    data = {**spec.model_dump(mode="json", exclude_unset=True), **overrides}
    return parse_spec(data, str(path))


def run_grid(
    spec: GridSpec | PathLike,
    root: PathLike | None = None,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    storage_shared: bool | None = None,
    preflight: bool = True,
) -> RunReport:
    """Run every trial of `spec` (a `GridSpec`, or the path of a grid.yaml) that is not
    already stored under `root`, as `batchlab run` does, and return the `RunReport`
    (`.counts` by status, `.skipped`, `.results`, `.wall_time_s`, `.cancelled`).

    `root` is the storage root (default $BATCHLAB_STORAGE, else ./batchlab-runs); trials
    already completed or diverged there are skipped, so a second call resumes. Ray: the
    running Ray if this process started one, else `address` (default $RAY_ADDRESS), else a
    local Ray with `num_cpus` CPUs. `preflight` first checks the grid's user code and data
    set sizes (raises `SpecError`), as the CLI does. A failed trial is a row with status
    `failed`, not an exception.
    """
    from scheduler.runner import run_grid as _run_grid
    from scheduler.spec import GridSpec

    grid = spec if isinstance(spec, GridSpec) else load_spec(spec)
    root_str = None if root is None else os.fspath(root)
    if preflight:
        from scheduler.preflight import preflight as _preflight

        _preflight(grid, root_str)
    return _run_grid(
        grid,
        root_str,
        address=address,
        num_cpus=num_cpus,
        progress=progress,
        storage_shared=storage_shared,
    )


def open_warehouse(
    root: PathLike | None = None, *, threads: int = 2, memory_limit: str = "1GB"
) -> Warehouse:
    """A read-only `Warehouse` over the storage root `root` (default $BATCHLAB_STORAGE, else
    ./batchlab-runs; an `s3://` URL works too). It reads the files there when it is opened:
    open it again to see trials committed since. Use it as a context manager, or `close()`."""
    from warehouse.layout import Layout
    from warehouse.sql import readonly_connect

    layout = Layout.open(None if root is None else os.fspath(root))
    return Warehouse(
        layout.root, readonly_connect(layout, threads=threads, memory_limit=memory_limit)
    )


class Warehouse:
    """A storage root's results, read-only: the views (`trials`, `epochs`, `steps`,
    `layers`, `probes`, `landscapes`, `analyses`; docs/warehouse.md) and the named queries
    of `warehouse.queries` (docs/api.md lists them).

    `con` is the DuckDB connection itself: sealed (one SELECT at a time through `sql`; no
    file or network access beyond the storage root's tables, no SET), so nothing done
    through it changes the storage root.
    """

    def __init__(self, root: str, con: duckdb.DuckDBPyConnection) -> None:
        self.root = root
        self.con = con

    def sql(
        self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
    ) -> pd.DataFrame:
        """The result of one SELECT (WITH, FROM, DESCRIBE, ... too) as a DataFrame; any
        other statement raises `warehouse.sql.SQLRefused`. Bind values with `$name` and a
        mapping `params` (or `?` and a sequence), never by pasting them into the text."""
        from warehouse.sql import check_statement

        check_statement(self.con, query)
        return self.con.execute(query, params).fetchdf()

    @property
    def queries(self) -> list[str]:
        """The names `query` takes."""
        from warehouse.queries import NAMED_QUERIES

        return sorted(NAMED_QUERIES)

    def query(self, name: str, **params: Any) -> pd.DataFrame:
        """Run the named query `name` (one of `queries`). Keywords that name a field of
        `warehouse.queries.Filters` select the trials (`experiment`, `dataset`, `model`,
        `optimizer`, `lr_scaling`, `seed`, `batch_size`, `lr`, `trial_id`, `status`: a
        value or a list of values; `status` defaults to completed trials only); any other
        keyword is passed to the query (`bins_per_decade=5` to `update_norm_histogram`)."""
        from warehouse.queries import NAMED_QUERIES, Filters

        fn = NAMED_QUERIES.get(name)
        if fn is None:
            raise ValueError(f"unknown named query {name!r}; known: {', '.join(self.queries)}")
        names = {f.name for f in fields(Filters)} - {"extra"}
        chosen: dict[str, Any] = {k: _values(v) for k, v in params.items() if k in names}
        rest = {k: v for k, v in params.items() if k not in names}
        query: Any = fn  # some named queries take keywords besides the Filters
        return query(self.con, Filters(**chosen), **rest)

    def experiments(self) -> pd.DataFrame:
        """One row per experiment in the storage root, with its trial counts."""
        from warehouse.queries import experiments

        return experiments(self.con)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Warehouse({self.root!r})"


def _values(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        return (value,)
    return tuple(value)
