"""The app's disk cache (app/disk_cache.py) and its warm-up (app/warm.py): results survive a
server restart (Streamlit's caches emptied) and are read back without recomputing; a new
data version is never answered from an older one; nothing is written under the storage
root; torn entries, many writers and the size bound are handled."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st

from app import disk_cache
from app.common import data_version
from app.warm import is_warm, page_test, warm


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("BATCHLAB_APP_CACHE", str(d))
    monkeypatch.setenv("BATCHLAB_APP_CACHE_KEY", str(tmp_path / "config" / "app-cache.key"))
    monkeypatch.delenv("BATCHLAB_APP_CACHE_MB", raising=False)
    return d


def _restart() -> None:
    """What a new server process starts with: Streamlit's caches empty."""
    st.cache_data.clear()
    st.cache_resource.clear()


def _render(monkeypatch, root: str, url_path: str):
    monkeypatch.setenv("BATCHLAB_STORAGE", root)
    at = page_test(url_path, 120).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _files(root: str | Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*")}


def test_persisted_computes_once_then_reads(cache):
    calls = []

    @disk_cache.persisted
    def twice(root: str, version: str, n: int, _ignored: object = None) -> pd.DataFrame:
        calls.append(n)
        return pd.DataFrame({"x": [n, n * 2]})

    a = twice("r", "v1", 3, _ignored=object())  # "_" arguments are not part of the key
    b = twice("r", "v1", 3, _ignored=object())
    assert calls == [3] and a.equals(b)
    twice("r", "v2", 3)  # another version: computed again
    assert calls == [3, 3]
    assert len(list(cache.glob("*.pkl"))) == 2


def test_restart_reads_disk_and_never_writes_the_root(monkeypatch, cache, fixture_root):
    before = _files(fixture_root)
    _restart()
    at = _render(monkeypatch, fixture_root, "findings")
    first = at.table[0].value
    assert list(cache.glob("*.pkl")), "nothing was cached"
    _restart()
    hits, misses = disk_cache.STATS["hits"], disk_cache.STATS["misses"]
    at = _render(monkeypatch, fixture_root, "findings")
    assert disk_cache.STATS["misses"] == misses, "a restart recomputed"
    assert disk_cache.STATS["hits"] > hits
    pd.testing.assert_frame_equal(at.table[0].value, first)
    assert _files(fixture_root) == before, "the app wrote into the storage root"


def _fixture_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "fixtures" / "synthetic_warehouse.py"
    spec = importlib.util.spec_from_file_location("synthetic_warehouse", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_new_data_version_is_never_answered_from_the_old_one(monkeypatch, cache, tmp_path):
    fixture = _fixture_module()
    root = fixture.build(tmp_path / "runs", experiments=("support",))
    v1 = data_version(root)
    _restart()
    at = _render(monkeypatch, root, "overview")
    assert at.sidebar.multiselect(key="f_experiment").options == ["support"]
    n1 = len(at.dataframe[1].value)
    fixture.build(root, experiments=("sparse",))  # new trials arrive
    assert data_version(root) != v1
    for restart in (False, True):  # the running server, and a new one
        if restart:
            _restart()
        at = _render(monkeypatch, root, "overview")
        assert at.sidebar.multiselect(key="f_experiment").options == ["sparse", "support"]
        assert len(at.dataframe[1].value) == n1 + 2, restart  # sparse: 2 trials


def test_code_change_is_a_new_key(cache, monkeypatch):
    key = disk_cache.entry_key("f", (("version", "v"),))
    disk_cache.code_fingerprint.cache_clear()
    monkeypatch.setattr(disk_cache.sys, "version", "another python")
    try:
        assert disk_cache.entry_key("f", (("version", "v"),)) != key
    finally:
        disk_cache.code_fingerprint.cache_clear()


def test_unstable_arguments_are_not_cached(cache):
    assert disk_cache.entry_key("f", (("x", object()),)) is None


def test_torn_entry_is_a_miss(cache):
    calls = []

    @disk_cache.persisted
    def value(version: str) -> int:
        calls.append(version)
        return 7

    assert value("v") == 7
    (entry,) = cache.glob("*.pkl")
    entry.write_bytes(b"\x80\x05 not a whole pickle")
    assert value("v") == 7 and calls == ["v", "v"]
    assert disk_cache.load(entry.stem) == (True, 7)  # rewritten whole


def test_size_is_bounded_least_recently_used_first(cache, monkeypatch):
    blob = os.urandom(100_000)
    for i in range(5):
        assert disk_cache.store(f"k{i}", blob)
        os.utime(cache / f"k{i}.pkl", (1000 + i, 1000 + i))
    disk_cache.load("k0")  # used now: the newest
    gone = disk_cache.prune(limit_bytes=250_000)
    assert gone == 3
    assert sorted(p.stem for p in cache.glob("*.pkl")) == ["k0", "k4"]


def test_unwritable_cache_fails_open(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHLAB_APP_CACHE_KEY", str(tmp_path / "app-cache.key"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("BATCHLAB_APP_CACHE", str(blocker / "cache"))
    assert disk_cache.store("k", 1) is False
    assert disk_cache.load("k") == (False, None)


def test_disabled(monkeypatch):
    monkeypatch.setenv("BATCHLAB_APP_CACHE", "off")
    assert disk_cache.cache_dir() is None and disk_cache.store("k", 1) is False


def _writer(d: str, n: int) -> None:
    os.environ["BATCHLAB_APP_CACHE"] = d
    for i in range(n):
        disk_cache.store("shared", pd.DataFrame({"i": [i] * 20_000}))


def test_concurrent_writers_never_tear_an_entry(cache):
    cache.mkdir(parents=True)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(cache), 30)) for _ in range(2)]
    for p in procs:
        p.start()
    errors, seen = disk_cache.STATS["errors"], 0
    while any(p.is_alive() for p in procs):
        hit, df = disk_cache.load("shared")
        if hit:
            assert len(df) == 20_000 and df["i"].nunique() == 1
            seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert disk_cache.STATS["errors"] == errors, "a reader met a torn entry"
    assert seen, "the reader never saw an entry"
    assert not list(cache.glob(".tmp-*")), "temporary files left behind"


def test_warm_fills_every_page(monkeypatch, cache, fixture_root):
    monkeypatch.setenv("BATCHLAB_STORAGE", fixture_root)
    monkeypatch.delenv("BATCHLAB_APP_WARMING", raising=False)
    _restart()
    times = warm(fixture_root, ["findings", "curves", "time"])
    assert set(times) == {"findings", "curves", "time"}
    assert is_warm(fixture_root, data_version(fixture_root))
    assert warm(fixture_root, ["findings"]) == {}  # done already: no second warm-up
    for url in ("findings", "curves", "time"):
        _restart()
        misses = disk_cache.STATS["misses"]
        _render(monkeypatch, fixture_root, url)
        assert disk_cache.STATS["misses"] == misses, f"{url}: computed after the warm-up"


def test_background_warmer_with_a_relative_root(monkeypatch, cache, fixture_root):
    """`batchlab app` and a server start it detached; a relative root means the caller's."""
    from app.warm import start_background

    monkeypatch.delenv("BATCHLAB_APP_WARM", raising=False)
    monkeypatch.delenv("BATCHLAB_APP_WARMING", raising=False)
    root = Path(fixture_root)
    monkeypatch.chdir(root.parent)
    proc = start_background(root.name)
    assert proc is not None and proc.wait(timeout=600) == 0
    assert is_warm(root.name, data_version(root.name))
    assert start_background(root.name, data_version(root.name)) is None  # warm already
    monkeypatch.setenv("BATCHLAB_APP_WARM", "0")
    assert start_background(root.name) is None
