"""Every chart of every page is readable (issue 23): in headless Chromium at 1500 x 1100, on
four warehouses (the demo, a custom-model study, 10,000 trials, native + custom + imported
studies side by side), each plot area (Vega's view background, per facet panel) is at least
MIN_HEIGHT x MIN_WIDTH CSS pixels, no chart runs past its column (a clipped legend or axis
title), and no page shows an exception.

The app draws every chart as SVG here (BATCHLAB_APP_RENDERER=svg; a canvas has no marks to
measure, and Vega lays a chart out the same for either renderer). Prints the smallest and
the median plot height and width per warehouse; BATCHLAB_PLOT_AREAS=FILE.json also writes
every chart's numbers there. Skips with its reason when Chromium or playwright is missing.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from app.common import PAGES
from app.screens import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TITLES,
    example_runs,
    page_query,
    page_url,
    plot_areas,
    streamlit_server,
    wait_finished,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MIN_HEIGHT, MIN_WIDTH = 200, 300
OVERFLOW_PX = 4  # a chart whose drawing runs further past its column is clipped (1-3 px: rounding)
# BATCHLAB_PLOT_AREAS_WIDTH=1400: the narrower window the charts must also fit.
VIEWPORT = {"width": int(os.environ.get("BATCHLAB_PLOT_AREAS_WIDTH", "1500")), "height": 1100}
WAREHOUSES = ("demo", "custom", "bench", "mixed")


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("SKIPPED: the playwright package is not installed (pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def measure(browser, storage: str, log: Path) -> tuple[list[dict], dict[str, str]]:
    """Every chart of every page (a fresh server over `storage`): its plot areas, and each
    page's exception text if it showed one."""
    runs = example_runs(storage)
    charts: list[dict] = []
    crashed: dict[str, str] = {}
    saved = os.environ.get("BATCHLAB_APP_RENDERER")
    os.environ["BATCHLAB_APP_RENDERER"] = "svg"
    try:
        with streamlit_server(storage, log) as url:
            for info in PAGES:
                page = browser.new_page(viewport=VIEWPORT)
                try:
                    t0 = time.monotonic()
                    target = page_url(url, info.url_path) + page_query(info.url_path, runs)
                    page.goto(target, wait_until="domcontentloaded")
                    wait_finished(page, TITLES[info.url_path])
                    exc = page.locator('[data-testid="stException"]')
                    if exc.count():
                        crashed[info.url_path] = exc.first.inner_text()[:2000]
                    for c in plot_areas(page):
                        charts.append({"page": info.url_path, **c})
                    print(f"  {info.url_path:15s} {time.monotonic() - t0:5.1f} s", flush=True)
                finally:
                    page.close()
    finally:
        if saved is None:
            os.environ.pop("BATCHLAB_APP_RENDERER", None)
        else:
            os.environ["BATCHLAB_APP_RENDERER"] = saved
    return charts, crashed


def summary(charts: list[dict]) -> dict:
    hs = [c["height"] for c in charts if c.get("renderer") == "svg"]
    ws = [c["width"] for c in charts if c.get("renderer") == "svg"]
    if not hs:
        return {"charts": 0}
    return {
        "charts": len(charts),
        "min_height": min(hs),
        "median_height": statistics.median(hs),
        "min_width": min(ws),
        "median_width": statistics.median(ws),
        "under_150_tall": sum(h < 150 for h in hs),
    }


def failures(charts: list[dict]) -> list[str]:
    bad = []
    for c in charts:
        name = f"{c['page']} #{c['index']} ({c['heading']!r})"
        if c.get("renderer") != "svg":
            bad.append(f"{name}: no SVG ({c.get('renderer')})")
        elif c["height"] < MIN_HEIGHT or c["width"] < MIN_WIDTH:
            bad.append(f"{name}: plot areas {c['cells']} (< {MIN_WIDTH} x {MIN_HEIGHT})")
        elif c["overflow"] > OVERFLOW_PX:
            bad.append(f"{name}: {c['overflow']} px past its column")
    return bad


@pytest.mark.parametrize("warehouse_root", WAREHOUSES, indirect=True)
def test_every_chart_has_a_readable_plot_area(chromium, warehouse_root, request, tmp_path):
    name = request.node.callspec.id
    t0 = time.monotonic()
    charts, crashed = measure(chromium, warehouse_root, tmp_path / "streamlit.log")
    s = summary(charts)
    print(f"{name}: {s} ({time.monotonic() - t0:.0f} s)")
    out = os.environ.get("BATCHLAB_PLOT_AREAS")
    if out:
        path = Path(out)
        got = json.loads(path.read_text()) if path.exists() else {}
        got[name] = {"summary": s, "charts": charts, "crashed": crashed}
        path.write_text(json.dumps(got, indent=1))
    assert not crashed, crashed
    assert charts, f"{name}: no charts at all"
    bad = failures(charts)
    assert not bad, f"{name}: {len(bad)} of {len(charts)} charts too small:\n" + "\n".join(bad)
