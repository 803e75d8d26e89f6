"""Fixtures of the reliability tests (helpers are in helpers.py)."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from tests.reliability.helpers import kill_pids, pids_mentioning


@pytest.fixture
def ray_tmp():
    """A short private Ray temp dir (Unix socket paths must stay under 107 bytes); every
    process still mentioning it afterwards is killed by pid, then the dir is removed."""
    path = tempfile.mkdtemp(prefix="blr-", dir="/tmp")
    yield path
    kill_pids(pids_mentioning(path))
    shutil.rmtree(path, ignore_errors=True)
