"""Fixtures of the workers.downloads tests (test_downloads.py, test_download_formats.py):
a local HTTP server, and `isolated_downloads`, which those modules use for every test
(`pytestmark`)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.workers.download_helpers import FakeServer, closed_port_url
from workers import downloads


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.stop()


@pytest.fixture
def isolated_downloads(monkeypatch, tmp_path):
    """No internet, no proxy, a private cache; every mirror a closed local port."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("BATCHLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("BATCHLAB_DATA_CACHE", str(tmp_path / "cache"))
    dead = closed_port_url()
    for name, spec in list(downloads.REGISTRY.items()):
        monkeypatch.setitem(downloads.REGISTRY, name, dataclasses.replace(spec, mirrors=(dead,)))
    monkeypatch.setattr(downloads, "DOWNLOAD_TIMEOUT_S", 5.0)
    return tmp_path
