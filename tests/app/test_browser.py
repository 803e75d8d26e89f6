"""The explorer in a real browser: `streamlit run` on 127.0.0.1 over the fixture warehouse,
headless system Chromium driven by Playwright. Every page finishes running without an
exception element or a JavaScript error and draws its charts; the surface panels have more
than one colour; the per-layer chart has y ticks; the default selection is every
experiment; a screenshot of each page is saved.

Skips when Chromium or the playwright package is absent (`.ci/run` installs Chromium).
Screenshots: under pytest's tmp dir, or BATCHLAB_SCREENSHOTS=DIR to keep them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.common import PAGES
from app.screens import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TITLES,
    page_url,
    screenshot,
    streamlit_server,
    wait_finished,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(fixture_root, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    pytest.importorskip("playwright.sync_api")
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with streamlit_server(fixture_root, log) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_titles_cover_every_page():
    assert set(TITLES) == {p.url_path for p in PAGES}


def _open(browser, url: str, url_path: str):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="domcontentloaded")
    wait_finished(page, TITLES[url_path])
    return page, errors


def _shots(tmp_path_factory) -> Path:
    shots = Path(os.environ.get("BATCHLAB_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    return shots


@pytest.mark.parametrize("url_path", [p.url_path for p in PAGES])
def test_page_in_browser(server, browser, url_path, tmp_path_factory):
    page, errors = _open(browser, page_url(server, url_path), url_path)
    try:
        assert "Page not found" not in page.content(), url_path
        exceptions = page.locator('[data-testid="stException"]')
        charts = page.locator('[data-testid="stVegaLiteChart"]')
        for i in range(charts.count()):  # every chart drew something
            assert charts.nth(i).locator("canvas, svg").count(), (url_path, i)
        screenshot(page, _shots(tmp_path_factory) / f"{url_path}.png")
        assert exceptions.count() == 0, f"{url_path}: {exceptions.first.inner_text()}"
        assert not errors, f"{url_path}: JavaScript errors {errors}"
        if url_path != "sql":  # default selection: every experiment of the warehouse
            box = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]').first
            text = box.inner_text()
            assert "Experiment" in text, text
            assert all(e in text for e in ("contradict", "sparse", "support")), text
    finally:
        page.close()


def _svg_stats(page, index: int) -> dict:
    """From the index-th chart's SVG (the app asks Vega for SVG): the distinct fills of each
    rect mark (one per facet panel), and the y axes' tick labels."""
    return page.evaluate(
        """(i) => {
            const el = document.querySelectorAll('[data-testid="stVegaLiteChart"]')[i];
            const svg = el.querySelector('svg.marks');
            if (!svg) return {svg: false};
            // One rect mark per facet panel (legends' gradients left out).
            const rects = [...svg.querySelectorAll('g.mark-rect')].filter(
                r => !r.closest('g.role-legend'));
            const fills = rects.map(r => new Set(
                [...r.querySelectorAll('path')].map(p => p.getAttribute('fill'))
            ).size);
            const yaxes = [...svg.querySelectorAll('g.role-axis')].filter(
                a => (a.getAttribute('aria-label') || '').startsWith('Y-axis'));
            const yticks = yaxes.flatMap(a => [...a.querySelectorAll('g.role-axis-label text')]
                .map(t => t.textContent).filter(t => t.trim()));
            return {svg: true, fills, yticks, yaxes: yaxes.map(a => a.getAttribute('aria-label'))};
        }""",
        index,
    )


def test_surface_panels_have_more_than_one_colour(server, browser):
    page, errors = _open(browser, page_url(server, "landscapes"), "landscapes")
    try:
        charts = page.locator('[data-testid="stVegaLiteChart"]')
        assert charts.count() == 2  # interpolation, surfaces
        got = _svg_stats(page, 1)
        assert got["svg"], got
        assert len(got["fills"]) == 4, got  # four surfaces side by side
        assert all(n > 1 for n in got["fills"]), got["fills"]
        assert not errors
    finally:
        page.close()


def test_per_layer_chart_has_y_ticks(server, browser):
    page, errors = _open(browser, page_url(server, "distance"), "distance")
    try:
        # The per-layer chart is the page's second chart (after the final distance).
        got = _svg_stats(page, 1)
        assert got["svg"], got
        assert any("log" in a for a in got["yaxes"]), got["yaxes"]
        assert len(got["yticks"]) >= 2, got
        assert not errors
    finally:
        page.close()


def test_running_view_draws_live_curves(server, browser, fixture_root):
    from warehouse import live
    from warehouse.layout import Layout

    layout = Layout.open(fixture_root)
    run = live.LiveRun(layout, "live-browser", "r1", [{"trial_id": "t1", "max_epochs": 4}])
    t = live.LiveTrial(layout, "live-browser", "t1", max_epochs=4, interval_s=0)
    try:
        for e in (1, 2, 3):
            t.epoch({"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e})
        page, errors = _open(browser, page_url(server, "running"), "running")
        try:
            assert "live-browser" in page.content()
            charts = page.locator('[data-testid="stVegaLiteChart"]')
            assert charts.count() == 1 and charts.first.locator("canvas, svg").count()
            assert page.locator('[data-testid="stException"]').count() == 0
            assert not errors, errors
        finally:
            page.close()
    finally:
        t.close()
        run.finish("finished")
        live.clear_trial(layout, "live-browser", "t1")
        layout.delete(live.run_file(layout, "live-browser", "r1"))
