"""The explorer in a real browser: `streamlit run` on 127.0.0.1 over the fixture warehouse,
headless system Chromium driven by Playwright; every page finishes running without an
exception element, and a screenshot of each is saved.

Skips when Chromium or the playwright package is absent (`.ci/run` installs Chromium).
Screenshots: under pytest's tmp dir, or BATCHLAB_SCREENSHOTS=DIR to keep them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.common import PAGES

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
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


def _free_port() -> int:
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


@pytest.fixture(scope="module")
def server(fixture_root, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    pytest.importorskip("playwright.sync_api")
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = {**os.environ, "BATCHLAB_STORAGE": fixture_root, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"),
        "--server.headless", "true", "--server.address", "127.0.0.1",
        "--server.port", str(port), "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip
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
        # Our own process group (start_new_session): streamlit and any child it started.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _wait_finished(page, title: str) -> None:
    """Until the page's title shows, the script has finished (the app root's
    `data-test-script-state` is "notRunning" and the running indicator is gone) and no
    element is still a loading skeleton, for a quiet second in a row (a second run can
    follow the first)."""
    page.get_by_role("heading", name=title).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    busy = page.locator(
        '[data-testid="stApp"]:not([data-test-script-state="notRunning"]), '
        '[data-testid="stStatusWidget"], [data-testid="stSkeleton"]'
    )
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        if busy.count() == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.0:
                return
        else:
            quiet_since = None
        page.wait_for_timeout(200)
    raise TimeoutError(f"{page.url}: still running after {PAGE_TIMEOUT_MS} ms")


TITLES = {
    "findings": "Findings: does your data support them?",
    "overview": "Experiments and trials",
    "curves": "Training and validation curves by batch size",
    "generalization": "Generalization gap by batch size",
    "time": "Time by batch size",
    "distance": "Distance travelled by batch size",
    "sharpness": "Sharpness and the critical batch size",
    "landscapes": "Loss landscapes",
    "lr_batch": "Learning rate x batch size",
    "sql": "SQL",
}


def test_titles_cover_every_page():
    assert set(TITLES) == {p.url_path for p in PAGES}


@pytest.mark.parametrize("url_path", [p.url_path for p in PAGES])
def test_page_in_browser(server, browser, url_path, tmp_path_factory):
    shots = Path(os.environ.get("BATCHLAB_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        # The default page lives at the root URL.
        path = "" if next(p for p in PAGES if p.url_path == url_path).default else url_path
        page.goto(f"{server}/{path}", wait_until="domcontentloaded")
        _wait_finished(page, TITLES[url_path])
        if url_path != "sql":  # the page's own charts have drawn
            charts = page.locator('[data-testid="stVegaLiteChart"]')
            if charts.count():
                charts.first.locator("canvas, svg").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        assert "Page not found" not in page.content(), url_path
        exceptions = page.locator('[data-testid="stException"]')
        page.screenshot(path=str(shots / f"{url_path}.png"), full_page=True)
        assert exceptions.count() == 0, f"{url_path}: {exceptions.first.inner_text()}"
        assert not errors, f"{url_path}: JavaScript errors {errors}"
    finally:
        page.close()
