"""Page times of the explorer: every page rendered with Streamlit's AppTest on a warehouse
(default: the committed demo), in one process, three ways:

- cold: every cache emptied first (st.cache_data, st.cache_resource: the DuckDB connection
  too) - a page's first render after the server started or the warehouse changed;
- first: a new session (a new AppTest) with the server's caches as other pages and users
  left them - what opening a page normally costs;
- rerun: the same session again (a widget change that alters nothing).

Times are the script's own (app/main.py measures its run: what a browser waits for on the
server), with AppTest's wall time beside them; the baseline for the ratio is AppTest's
wall time for an empty script in the same run (the harness' own cost). Target (issue 18): every page's first render < 1 s on the
demo. Prints a table; writes JSON (--out).

    python benchmarks/app_pages.py                       # the demo
    python benchmarks/app_pages.py --storage ROOT --out benchmarks/results/app_pages_big.json
    python benchmarks/app_pages.py --synthetic 2000      # tests/fixtures' generator, N trials
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _clear() -> None:
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


def _render(page_file: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=600)
    at.switch_page(f"views/{page_file}")
    t0 = time.perf_counter()
    at.run()
    dt = time.perf_counter() - t0
    if at.exception:
        raise RuntimeError(f"{page_file}: {[e.value for e in at.exception]}")
    return at, dt, _script_s(at)


def _script_s(at) -> float:
    """The script's own time (app/main.py measures it), without the harness' thread start
    and message delivery."""
    import app.common

    return float(app.common.LAST_RENDER_S)


def _harness_s(repeat: int) -> float:
    """An AppTest run of a one-line script: the harness' own cost per run."""
    from streamlit.testing.v1 import AppTest

    out = []
    for _ in range(repeat):
        at = AppTest.from_string("import streamlit as st\nst.write('x')")
        t0 = time.perf_counter()
        at.run()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _synthetic(n_trials: int) -> str:
    """A warehouse of `n_trials` hand-made trials (tests/fixtures/synthetic_warehouse.py's
    `build_large` when it has one, else copies of its experiments)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "synthetic_warehouse", REPO / "tests" / "fixtures" / "synthetic_warehouse.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    root = tempfile.mkdtemp(prefix="batchlab-app-bench-") + "/runs"
    if hasattr(mod, "build_large"):
        return mod.build_large(root, n_trials)
    return mod.build(root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default=str(REPO / "examples" / "results"))
    ap.add_argument("--synthetic", type=int, default=0, help="a synthetic warehouse instead")
    ap.add_argument("--repeat", type=int, default=3, help="renders per page and kind (median)")
    ap.add_argument("--pages", default="", help="comma-separated url paths (default: all)")
    ap.add_argument("--out", default="", help="write the JSON here")
    args = ap.parse_args(argv)
    root = _synthetic(args.synthetic) if args.synthetic else args.storage
    os.environ["BATCHLAB_STORAGE"] = root

    import app.charts  # noqa: F401  (imports are the server's, once: not a page's time)
    import app.common as common

    pages = [p for p in common.PAGES if not args.pages or p.url_path in args.pages.split(",")]
    _render(common.PAGES[0].file)  # warm the interpreter (imports, Streamlit internals)
    harness = _harness_s(5)
    rows = []
    for p in pages:
        t: dict[str, list[float]] = {k: [] for k in ("cold", "first", "rerun")}
        wall: dict[str, list[float]] = {k: [] for k in ("cold", "first")}
        for _ in range(args.repeat):
            _clear()
            at, dt, script = _render(p.file)
            t["cold"].append(script)
            wall["cold"].append(dt)
            at.run()
            t["rerun"].append(_script_s(at))
            _, dt, script = _render(p.file)
            t["first"].append(script)
            wall["first"].append(dt)
        row = {"page": p.url_path}
        row |= {f"{k}_s": round(statistics.median(v), 3) for k, v in t.items()}
        row |= {f"{k}_apptest_wall_s": round(statistics.median(v), 3) for k, v in wall.items()}
        rows.append(row)
        print(
            f"{p.url_path:15s} cold {row['cold_s']:6.2f} s   first {row['first_s']:6.2f} s   "
            f"rerun {row['rerun_s']:6.2f} s   (AppTest wall: cold {row['cold_apptest_wall_s']:.2f}"
            f", first {row['first_apptest_wall_s']:.2f})",
            flush=True,
        )
    worst_first = max(r["first_s"] for r in rows)
    worst_cold = max(r["cold_s"] for r in rows)
    print(
        f"harness (empty script) {harness:.3f} s; worst first render {worst_first:.2f} s "
        f"({worst_first / harness:.0f}x the harness), worst cold {worst_cold:.2f} s; "
        f"target first < 1 s: {'met' if worst_first < 1 else 'NOT met'}"
    )
    result = {
        "benchmark": "app_pages",
        "storage": str(Path(root).resolve().relative_to(REPO))
        if Path(root).resolve().is_relative_to(REPO)
        else ("synthetic" if args.synthetic else root),
        "synthetic_trials": args.synthetic or None,
        "repeat": args.repeat,
        "harness_s": round(harness, 4),
        "pages": rows,
        "worst_first_s": worst_first,
        "worst_cold_s": worst_cold,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_1min": round(os.getloadavg()[0], 2),
        },
        "command": "python benchmarks/app_pages.py " + " ".join(argv or sys.argv[1:]),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
