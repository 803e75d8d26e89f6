"""Warm the explorer's disk cache (app/disk_cache.py) for one warehouse version: render every
page once, headless (Streamlit's AppTest script runner, in this process), at the default
selection, so that the results, findings and chart specs a first visit needs are on disk
before anyone opens the page.

`batchlab app` starts it beside the server; a server that sees a new data version starts it
again for that version (`app.common.refresh_version`; app/common.py imports this module,
never the other way: the pages come from app/pages.py, the data version from
warehouse/version.py). One warmer per (storage root, data version, code) at a time: a lock
file in the cache directory; a second one exits at once.

    python -m app.warm --storage ROOT          # prints each page's time
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from app.pages import PAGE_BY_URL, PAGES
from warehouse.version import data_version

REPO = Path(__file__).resolve().parent.parent
WARMING_ENV = "BATCHLAB_APP_WARMING"  # set inside a warmer: its renders start no warmer
LOCK_STALE_S = 600.0  # a lock older than this is a warmer that died


def _marker(root: str, version: str, kind: str) -> Path | None:
    """`.warm-<tag>.lock` (a warmer is at work) or `.warm-<tag>.done` (one finished)."""
    from app.disk_cache import cache_dir, code_fingerprint

    d = cache_dir()
    if d is None:
        return None
    tag = hashlib.sha256(f"{root}|{version}|{code_fingerprint()}".encode()).hexdigest()[:16]
    return d / f".warm-{tag}.{kind}"


def is_warm(root: str, version: str) -> bool:
    """Whether a warmer finished for this root, version and code."""
    done = _marker(root, version, "done")
    return done is not None and done.exists()


def _take_lock(path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if time.time() - path.stat().st_mtime > LOCK_STALE_S:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def page_test(url_path: str, timeout_s: float = 900):
    """A Streamlit AppTest of the whole app (app/main.py) set to open page `url_path`.

    AppTest.switch_page names a page by its file, and before the first run it takes the
    file's name for the page's id; `st.Page` ids hash the url path (the Time page's file is
    timing.py): so the id is set from the url path here, and the first run opens the page
    asked for, not the default one."""
    from streamlit.testing.v1 import AppTest
    from streamlit.util import calc_hash

    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=timeout_s)
    at.switch_page(f"views/{PAGE_BY_URL[url_path].file}")
    at._page_hash = calc_hash(url_path)
    return at


def warm(root: str, pages: list[str] | None = None, quiet: bool = True) -> dict[str, float]:
    """Render every page (or the given url paths) once over `root`; returns each page's
    seconds ({} when another warmer holds this version, or the disk cache is off)."""
    os.environ["BATCHLAB_STORAGE"] = root
    os.environ[WARMING_ENV] = "1"
    sys.path.insert(0, str(REPO))
    version = data_version(root)
    lock = _marker(root, version, "lock")
    if lock is None or is_warm(root, version) or not _take_lock(lock):
        return {}
    times: dict[str, float] = {}
    try:
        for p in PAGES:
            if pages and p.url_path not in pages:
                continue
            at = page_test(p.url_path)
            t0 = time.perf_counter()
            at.run()
            times[p.url_path] = time.perf_counter() - t0
            if not quiet:
                state = "error" if at.exception else "ok"
                print(f"{p.url_path:15s} {times[p.url_path]:6.2f} s {state}", flush=True)
        done = _marker(root, version, "done")
        if done is not None:
            done.touch()
    finally:
        lock.unlink(missing_ok=True)
    return times


def start_background(root: str, version: str | None = None) -> subprocess.Popen | None:
    """Start `python -m app.warm --storage root` detached (no output); None inside a warmer,
    when `BATCHLAB_APP_WARM=0`, or when `version` is warm already."""
    if os.environ.get(WARMING_ENV) or os.environ.get("BATCHLAB_APP_WARM", "1") == "0":
        return None
    if version is not None:
        lock = _marker(root, version, "lock")
        busy = lock is not None and lock.exists()
        if is_warm(root, version) or (busy and time.time() - lock.stat().st_mtime < LOCK_STALE_S):
            return None
    # The caller's working directory (a relative root means the same folder), the repo on
    # the path (`app` importable from there).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, WARMING_ENV: "1", "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-m", "app.warm", "--storage", root],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default=os.environ.get("BATCHLAB_STORAGE", ""))
    ap.add_argument("--pages", default="", help="comma-separated url paths (default: all)")
    ap.add_argument("--verbose", action="store_true", help="print each page's time")
    args = ap.parse_args(argv)
    with contextlib.suppress(OSError):  # in the background: the server's renders go first
        os.nice(10)
    if not args.storage:
        from warehouse.layout import default_root

        args.storage = default_root()
    t0 = time.perf_counter()
    times = warm(args.storage, [p for p in args.pages.split(",") if p], quiet=not args.verbose)
    if args.verbose:
        print(f"warmed {len(times)} pages in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
