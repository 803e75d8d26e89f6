"""Screenshots of every page of the explorer, in headless Chromium (Playwright), and the
helpers the browser tests share: start `streamlit run app/main.py` on a free local port,
wait until a page has finished running.

    python -m app.screens                       # the demo warehouse -> docs/screens/*.png
    python -m app.screens --storage DIR --out /tmp/shots

Needs the system Chromium (`apt-get install chromium`) and the playwright package.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "results"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGE_TIMEOUT_MS = 90_000
# Each page's title (its first heading): the browser waits for it.
TITLES = {
    "findings": "Findings: does your data support them?",
    "overview": "Experiments and trials",
    "running": "Running",
    "runs": "Runs",
    "trial": "Trial",
    "compare": "Compare runs",
    "parallel": "Parallel coordinates",
    "curves": "Training and validation curves by batch size",
    "generalization": "Generalization gap by batch size",
    "time": "Time by batch size",
    "distance": "Distance travelled by batch size",
    "sharpness": "Sharpness and the critical batch size",
    "landscapes": "Loss landscapes",
    "lr_batch": "Learning rate x batch size",
    "choose": "Choose a batch size",
    "sql": "SQL",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit not healthy at {url} after {timeout_s} s")


@contextlib.contextmanager
def streamlit_server(storage: str, log: Path) -> Iterator[str]:
    """`streamlit run app/main.py` on 127.0.0.1 over `storage`; yields its URL; stops its
    process group afterwards."""
    port = free_port()
    env = {**os.environ, "BATCHLAB_STORAGE": str(storage), "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "app" / "main.py"),
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    except Exception:
        print(log.read_text()[-4000:])
        raise
    finally:
        if proc.poll() is None:  # our own process group (start_new_session)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_finished(page, title: str, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Until the page's title shows, the script has finished (the app root's
    `data-test-script-state` is "notRunning", no running indicator) and no element is a
    loading skeleton, for a quiet second in a row (a second run can follow the first);
    then until every chart has drawn."""
    page.get_by_role("heading", name=title).first.wait_for(timeout=timeout_ms)
    busy = page.locator(
        '[data-testid="stApp"]:not([data-test-script-state="notRunning"]), '
        '[data-testid="stStatusWidget"], [data-testid="stSkeleton"]'
    )
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        if busy.count() == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.0:
                break
        else:
            quiet_since = None
        page.wait_for_timeout(200)
    else:
        raise TimeoutError(f"{page.url}: still running after {timeout_ms} ms")
    charts = page.locator('[data-testid="stVegaLiteChart"]')
    for i in range(charts.count()):
        charts.nth(i).locator("canvas, svg").first.wait_for(timeout=timeout_ms)


# Every chart's plot areas, measured in the rendered SVG (the app draws every chart as SVG
# when BATCHLAB_APP_RENDERER=svg: app/show.py): Vega's view background (`path.background`
# of the root frame for a single or layered view, of each `cell` group of a facet), in CSS
# pixels; the chart's overflow past its column (a clipped legend or axis title); the
# heading above it (its name in reports).
PLOT_AREAS_JS = """() => {
  const heads = [...document.querySelectorAll('[data-testid="stMain"] h1, h2, h3, h4')];
  const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
  return charts.map((el, index) => {
    const before = heads.filter(h => h.compareDocumentPosition(el) & 4);
    const heading = before.length ? before[before.length - 1].textContent.trim() : '';
    const svg = el.querySelector('svg.marks');
    if (!svg) return {index, heading, renderer: el.querySelector('canvas') ? 'canvas' : 'none'};
    let bgs = [...svg.querySelectorAll('g.mark-group.role-scope.cell > g > path.background')];
    if (!bgs.length) bgs = [...svg.querySelectorAll(
      'g.mark-group.role-frame.root > g > path.background')];
    const cells = bgs.map(b => {
      const r = b.getBoundingClientRect();
      return [Math.round(r.width), Math.round(r.height)];
    });
    const box = el.closest('[data-testid="stElementContainer"]') || el;
    const col = (box.parentElement || box).getBoundingClientRect();
    const root = (svg.querySelector('g.mark-group.role-frame.root') || svg).getBoundingClientRect();
    const overflow = Math.max(0, root.right - col.right, col.left - root.left);
    return {index, heading, renderer: 'svg', cells,
            width: cells.length ? Math.min(...cells.map(c => c[0])) : 0,
            height: cells.length ? Math.min(...cells.map(c => c[1])) : 0,
            overflow: Math.round(overflow)};
  });
}"""


def plot_areas(page) -> list[dict]:
    """Per chart of the page: `cells` ([width, height] of each plot area: one, or one per
    facet panel), `width` / `height` (the smallest), `overflow` (CSS px past its column),
    `heading`, `renderer` ("canvas": not measurable; draw SVG)."""
    return page.evaluate(PLOT_AREAS_JS)


def screenshot(page, path: Path, max_height: int = 16000) -> None:
    """The whole page: Streamlit scrolls inside its main block, not the document, so the
    viewport is grown to the block's height first."""
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return m ? m.scrollHeight : document.body.scrollHeight; }"
    )
    width = page.viewport_size["width"] if page.viewport_size else 1500
    page.set_viewport_size({"width": width, "height": min(max(int(height), 600), max_height)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path), full_page=True)


def page_url(base: str, url_path: str) -> str:
    from app.common import PAGES

    default = next(p for p in PAGES if p.url_path == url_path).default
    return f"{base}/" if default else f"{base}/{url_path}"


def example_runs(storage: str, n: int = 3) -> list[str]:
    """A few completed trials of one setting, seed 0, different batch sizes: the runs the
    Runs, Trial and Compare screenshots show selected."""
    from warehouse.db import connect
    from warehouse.queries import example_runs as query

    con = connect(storage)
    try:
        return [str(t) for t in query(con, n)["trial_id"]]
    finally:
        con.close()


RUN_PAGES = ("compare", "trial", "runs")  # opened with example runs selected


def page_query(url_path: str, runs: list[str]) -> str:
    """The query string a page is opened with: the example runs on the run-level pages."""
    if url_path not in RUN_PAGES or not runs:
        return ""
    return "?" + "&".join(f"runs={t}" for t in runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default=str(DEMO), help="warehouse root (default: the demo)")
    ap.add_argument("--out", default=str(REPO / "docs" / "screens"), help="PNG folder")
    ap.add_argument("--width", type=int, default=1500)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from app.common import PAGES

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = example_runs(args.storage)
    log = out / ".streamlit.log"
    with streamlit_server(args.storage, log) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for info in PAGES:
            page = browser.new_page(viewport={"width": args.width, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.on(
                "console",
                lambda m, errors=errors: (
                    errors.append(m.text)
                    if m.type == "error" and "Failed to load resource" not in m.text
                    else None
                ),
            )
            t0 = time.monotonic()
            query = page_query(info.url_path, runs)
            page.goto(page_url(url, info.url_path) + query, wait_until="domcontentloaded")
            wait_finished(page, TITLES[info.url_path])
            dt = time.monotonic() - t0
            screenshot(page, out / f"{info.url_path}.png")
            print(f"{info.url_path:15s} {dt:5.1f} s  errors: {errors or 'none'}", flush=True)
            page.close()
        browser.close()
    log.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
