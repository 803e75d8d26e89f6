"""The versions a run records: batchlab's own (`package_version`, the `batchlab_version`
column) and the code's (`code_version`: the checkout's git commit). Read from the installed
distribution's metadata, or pyproject.toml in a source checkout, so the scheduler never
imports the CLI package `batchlab` (the layers point down only)."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


@functools.cache
def package_version() -> str:
    """batchlab's version (the same string as `batchlab.__version__`)."""
    pyproject = PROJECT / "pyproject.toml"
    try:  # a source checkout (also a Ray worker with the project on PYTHONPATH)
        project = pyproject.read_text().partition("[project]")[2].split("\n[", 1)[0]
        m = re.search(r'(?m)^version\s*=\s*"([^"]+)"', project)
        if m:
            return m.group(1)
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchlab")
    except PackageNotFoundError:
        return "0+unknown"


def code_version() -> str:
    """git commit of the batchlab checkout (+ '-dirty'), else the package version."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(PROJECT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{package_version()}+g{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return package_version()
