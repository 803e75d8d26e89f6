"""The explorer never imports torch or Ray: every app module, and every page run through
AppTest, in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.common import PAGES

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import sys
from pathlib import Path

from app.common import PAGES
import app, app.common, app.charts, warehouse.findings, warehouse.queries, warehouse.sql
from streamlit.testing.v1 import AppTest
from app.common import PAGES
at = AppTest.from_file(str(Path("app/main.py").resolve()), default_timeout=120)
for page in PAGES:
    at.switch_page(f"views/{page.file}").run()
    assert not at.exception, (page.file, [e.value for e in at.exception])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "ray"))
assert not heavy, heavy
print("ok", len(PAGES))
"""


def test_app_never_imports_torch_or_ray(fixture_root):
    env = {**os.environ, "BATCHLAB_STORAGE": fixture_root}
    res = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.strip().endswith(f"ok {len(PAGES)}")
