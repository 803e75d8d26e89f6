"""Page times of the explorer: every page rendered with Streamlit's AppTest and in headless
Chromium, same run, on a warehouse (default: the committed demo). AppTest, in this process:

- cold_nocache: every cache emptied (st.cache_data, st.cache_resource, the DuckDB
  connection, and the app's disk cache, app/disk_cache.py) - the first render of a data
  version nobody has rendered yet (before the warm-up has reached it);
- cold: Streamlit's caches emptied, the disk cache as `python -m app.warm` (which
  `batchlab app` starts) left it - a page's first render after a server start;
- first: a new session (a new AppTest) with the server's caches as other pages left them;
- rerun: the same session again (a widget change that alters nothing).

Chromium: a fresh `streamlit run app/main.py` server (disk cache warmed, its own warm-up
off), one browser session: the app opened at Findings (its time includes loading
Streamlit's frontend), then every other page by its sidebar link: seconds until the page's
title shows, the script has finished and every chart has drawn (what a user waits for).

AppTest times are the script's own (app/main.py measures its run), AppTest's wall time
beside them. Targets (issue 18): every page's first render (cold) < 1 s on the demo, < 2 s
on the 10,000-trial benchmark warehouse. Timings on a busy machine mean little: the run
waits until the 1-minute load average is below --max-load (up to --wait-s) and records it.

    python benchmarks/app_pages.py --out benchmarks/results/app_pages.json     # the demo
    python benchmarks/app_pages.py --bench-10k /tmp/bl10k/runs \\
        --out benchmarks/results/app_pages_10k.json   # benchmarks/warehouse.py's 10k trials
    python benchmarks/app_pages.py --synthetic 2000       # tests/fixtures' generator
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BROWSER_HOW = (
    "each page's first visit on a fresh server (disk cache warmed), one browser session: "
    "Findings = opening the app (frontend load included), the others by their sidebar link"
)
sys.path.insert(0, str(REPO))


def _clear(disk: bool = False) -> None:
    import streamlit as st

    from app import disk_cache

    st.cache_data.clear()
    st.cache_resource.clear()
    if disk:
        disk_cache.clear()


def _render(url_path: str):
    from app.warm import page_test

    at = page_test(url_path)
    t0 = time.perf_counter()
    at.run()
    dt = time.perf_counter() - t0
    if at.exception:
        raise RuntimeError(f"{url_path}: {[e.value for e in at.exception]}")
    return at, dt, _script_s()


def _script_s() -> float:
    """The script's own time (app/main.py measures it), without the harness' thread start
    and message delivery."""
    import app.common

    return float(app.common.LAST_RENDER_S)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _wait_quiet(max_load: float, wait_s: float) -> float:
    """Wait until the 1-minute load average is below `max_load` (at most `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while _load() >= max_load and time.monotonic() < deadline:
        print(f"  load {_load()} >= {max_load}: waiting", flush=True)
        time.sleep(20)
    return _load()


def _synthetic(n_trials: int) -> str:
    """A warehouse of `n_trials` hand-made trials (tests/fixtures/synthetic_warehouse.py's
    `build_large` when it has one, else its three experiments)."""
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


def _bench_10k(root: str) -> str:
    """benchmarks/warehouse.py's 10,000-trial warehouse at `root`, compacted (as
    `batchlab compact` leaves a finished study); built when `root` does not exist (minutes)."""
    if not Path(root).exists():
        py = sys.executable
        subprocess.run([py, str(REPO / "benchmarks" / "warehouse.py"), "--only-synthesize",
                        "--root", root], check=True)  # fmt: skip
        subprocess.run([py, "-m", "batchlab.cli", "compact", "--storage", root], check=True)
    return root


def _warm(root: str) -> float:
    """`python -m app.warm` in its own process, as `batchlab app` starts it."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "app.warm", "--storage", root, "--verbose"]
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - t0


def _apptest(pages, repeat: int) -> list[dict]:
    rows = []
    for p in pages:
        t: dict[str, list[float]] = {k: [] for k in ("cold_nocache", "cold", "first", "rerun")}
        wall: dict[str, list[float]] = {k: [] for k in ("cold_nocache", "cold", "first")}
        for _ in range(repeat):
            _clear(disk=True)
            _, dt, script = _render(p.url_path)
            t["cold_nocache"].append(script)
            wall["cold_nocache"].append(dt)
        rows.append({"page": p.url_path, "_t": t, "_wall": wall})
    return rows


def _apptest_warm(pages, rows: list[dict], repeat: int) -> None:
    by_page = {r["page"]: r for r in rows}
    for p in pages:
        t, wall = by_page[p.url_path]["_t"], by_page[p.url_path]["_wall"]
        for _ in range(repeat):
            _clear()
            at, dt, script = _render(p.url_path)
            t["cold"].append(script)
            wall["cold"].append(dt)
            at.run()
            t["rerun"].append(_script_s())
            _, dt, script = _render(p.url_path)
            t["first"].append(script)
            wall["first"].append(dt)


def _browser(root: str, pages) -> tuple[dict[str, float], str]:
    """Every page's first visit in Chromium on a fresh server, one browser session, as a user
    goes: the app opened at its default page (Findings; the time includes loading
    Streamlit's frontend), then each other page by its link in the sidebar. Seconds until
    the page's title shows, the script has finished and every chart has drawn.
    ({url_path: s}, '') or ({}, why not)."""
    from app.common import PAGES
    from app.screens import CHROMIUM, CHROMIUM_ARGS, TITLES, streamlit_server

    if not Path(CHROMIUM).exists():
        return {}, f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {}, "the playwright package is not installed"
    busy_css = (
        '[data-testid="stApp"]:not([data-test-script-state="notRunning"]), '
        '[data-testid="stStatusWidget"], [data-testid="stSkeleton"]'
    )

    def finished(tab, url_path: str, t0: float) -> float:
        tab.get_by_role("heading", name=TITLES[url_path]).first.wait_for(timeout=120_000)
        while tab.locator(busy_css).count():
            tab.wait_for_timeout(20)
        charts = tab.locator('[data-testid="stVegaLiteChart"]')
        for i in range(charts.count()):
            charts.nth(i).locator("canvas, svg").first.wait_for(timeout=120_000)
        dt = round(time.perf_counter() - t0, 3)
        if tab.locator('[data-testid="stException"]').count():
            raise RuntimeError(f"{url_path}: an exception in the browser")
        return dt

    out: dict[str, float] = {}
    log = Path(tempfile.mkdtemp(prefix="batchlab-app-bench-")) / "streamlit.log"
    os.environ["BATCHLAB_APP_WARM"] = "0"  # warmed already; no warmer competing for the CPU
    default = next(p for p in PAGES if p.default)
    with streamlit_server(root, log) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1600, "height": 1000})
        t0 = time.perf_counter()
        tab.goto(f"{url}/", wait_until="domcontentloaded")
        boot = finished(tab, default.url_path, t0)
        if any(p.url_path == default.url_path for p in pages):
            out[default.url_path] = boot
        more = tab.locator('[data-testid="stSidebarNavViewButton"]')
        if more.count() and "more" in more.first.inner_text().lower():
            more.first.click()  # the navigation lists its first pages until expanded
        for p in pages:
            if p.default:
                continue
            t0 = time.perf_counter()
            tab.locator(f'[data-testid="stSidebarNav"] a[href="{url}/{p.url_path}"]').click()
            out[p.url_path] = finished(tab, p.url_path, t0)
        browser.close()
    return out, ""


def _machine(loads: dict[str, float]) -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_1min": loads,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default=str(REPO / "examples" / "results"))
    ap.add_argument("--synthetic", type=int, default=0, help="a synthetic warehouse instead")
    ap.add_argument("--bench-10k", default="", help="benchmarks/warehouse.py's 10k warehouse")
    ap.add_argument("--repeat", type=int, default=3, help="renders per page and kind (median)")
    ap.add_argument("--pages", default="", help="comma-separated url paths (default: all)")
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium part")
    ap.add_argument("--max-load", type=float, default=2.5, help="wait for a lower load")
    ap.add_argument("--wait-s", type=float, default=900, help="longest wait for it")
    ap.add_argument("--out", default="", help="write the JSON here")
    args = ap.parse_args(argv)
    if args.bench_10k:
        root = _bench_10k(args.bench_10k)
    elif args.synthetic:
        root = _synthetic(args.synthetic)
    else:
        root = args.storage
    os.environ["BATCHLAB_STORAGE"] = root
    # A private disk cache: the user's own cannot make a "nothing cached" run warm.
    os.environ["BATCHLAB_APP_CACHE"] = tempfile.mkdtemp(prefix="batchlab-app-cache-")

    import app.charts  # noqa: F401  (imports are the server's, once: not a page's time)
    import app.common as common

    pages = [p for p in common.PAGES if not args.pages or p.url_path in args.pages.split(",")]
    loads = {"start": _wait_quiet(args.max_load, args.wait_s)}
    _clear(disk=True)
    _render(common.PAGES[0].url_path)  # warm the interpreter (imports, Streamlit internals)
    rows = _apptest(pages, args.repeat)
    loads["after_nocache"] = _load()
    loads["before_warm"] = _wait_quiet(args.max_load, args.wait_s)
    _clear(disk=True)
    warm_s = _warm(root)
    _apptest_warm(pages, rows, args.repeat)
    loads["after_apptest"] = _load()
    if not args.no_browser:
        loads["before_browser"] = _wait_quiet(args.max_load, args.wait_s)
    browser, why = ({}, "--no-browser") if args.no_browser else _browser(root, pages)
    loads["after_browser"] = _load()
    for r in rows:
        t, wall = r.pop("_t"), r.pop("_wall")
        r |= {f"{k}_s": round(statistics.median(v), 3) for k, v in t.items()}
        r |= {f"{k}_apptest_wall_s": round(statistics.median(v), 3) for k, v in wall.items()}
        r["chromium_s"] = browser.get(r["page"])
        chrome = f"{r['chromium_s']:6.2f} s" if r["chromium_s"] is not None else "     -  "
        print(
            f"{r['page']:15s} cold(nothing cached) {r['cold_nocache_s']:6.2f} s   "
            f"cold {r['cold_s']:5.2f} s   first {r['first_s']:5.2f} s   "
            f"rerun {r['rerun_s']:5.2f} s   Chromium {chrome}",
            flush=True,
        )
    worst = {k: max(r[f"{k}_s"] for r in rows) for k in ("cold_nocache", "cold", "first")}
    if browser:
        worst["chromium"] = max(browser.values())
    target = 2.0 if args.bench_10k or args.synthetic >= 10_000 else 1.0
    print(f"warm-up (python -m app.warm): {warm_s:.1f} s; Chromium: {why or 'measured'}")
    print(
        "worst: " + ", ".join(f"{k} {v:.2f} s" for k, v in worst.items()) + f"; target cold "
        f"< {target:g} s: {'met' if worst['cold'] < target else 'NOT met'}; load {loads}"
    )
    result = {
        "benchmark": "app_pages",
        "storage": str(Path(root).resolve().relative_to(REPO))
        if Path(root).resolve().is_relative_to(REPO)
        else ("benchmarks/warehouse.py 10k (compacted)" if args.bench_10k else root),
        "synthetic_trials": args.synthetic or None,
        "repeat": args.repeat,
        "warm_s": round(warm_s, 2),
        "chromium": why or BROWSER_HOW,
        "pages": rows,
        "worst_s": worst,
        "target_cold_s": target,
        "machine": _machine(loads),
        "command": "python benchmarks/app_pages.py " + " ".join(argv or sys.argv[1:]),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
