"""The app's disk cache never unpickles what this user did not write (issue 24, round 3): a
pickle planted in a shared cache folder ran code when a page read it. Now a folder not owned
by the user, or writable by group or others, is not used (one warning line), and an entry
whose HMAC does not verify under the user's key is a miss, deleted, never unpickled."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest

from app import disk_cache


class _Payload:
    """Unpickling it creates `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def env(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("BATCHLAB_APP_CACHE", str(d))
    monkeypatch.setenv("BATCHLAB_APP_CACHE_KEY", str(tmp_path / "config" / "app-cache.key"))
    disk_cache.reset()
    yield d
    disk_cache.reset()


def _cached_function():
    calls = []

    @disk_cache.persisted
    def page(version: str) -> str:
        calls.append(version)
        return f"computed {version}"

    return page, calls


def _plant(path: Path, marker: Path) -> None:
    data = pickle.dumps(_Payload(marker))
    path.write_bytes(data)
    # The payload is live: unpickled without the cache's check it runs.
    probe = marker.with_name("probe")
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()
    probe.unlink()


def test_planted_pickle_in_own_cache_does_not_run(env, tmp_path) -> None:
    page, calls = _cached_function()
    assert page("v1") == "computed v1"
    (entry,) = env.glob("*.pkl")
    marker = tmp_path / "ran"
    # A bare pickle, and a forged entry with the right header but no valid HMAC.
    for forged in (b"", disk_cache.MAGIC + b"\0" * 32):
        _plant(entry, marker)
        entry.write_bytes(forged + entry.read_bytes())
        refused = disk_cache.STATS["refused"]
        assert page("v1") == "computed v1"
        assert not marker.exists(), "a planted pickle ran"
        assert disk_cache.STATS["refused"] == refused + 1
        assert calls[-1] == "v1"  # recomputed, and written back with a valid HMAC
    assert disk_cache.load(entry.stem) == (True, "computed v1")
    # An entry written under another user's key (a copied cache) is refused too.
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    os.chmod(other, 0o600)
    payload = pickle.dumps(_Payload(marker))
    mac = disk_cache.entry_mac(other.read_bytes(), entry.stem, payload)
    entry.write_bytes(disk_cache.MAGIC + mac + payload)
    assert disk_cache.load(entry.stem) == (False, None) and not marker.exists()
    assert not entry.exists()


@pytest.mark.parametrize("how", ["group_writable", "world_writable", "other_owner"])
def test_shared_cache_folder_is_not_used(env, tmp_path, how, capsys) -> None:
    page, calls = _cached_function()
    env.mkdir(mode=0o700)
    if how == "other_owner":
        os.chown(env, 12345, 12345)
    else:
        os.chmod(env, 0o770 if how == "group_writable" else 0o777)
    key = disk_cache.entry_key(f"{page.__module__}.{page.__qualname__}", (("version", "v1"),))
    marker = tmp_path / "ran"
    _plant(env / f"{key}.pkl", marker)
    assert page("v1") == "computed v1" and page("v1") == "computed v1"
    assert not marker.exists(), "a pickle planted in a shared folder ran"
    assert calls == ["v1", "v1"]  # no disk cache at all: computed each time
    assert disk_cache.load(key) == (False, None) and disk_cache.store(key, 1) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("batchlab: app disk cache off:"), err
    assert ("owned by uid 12345" if how == "other_owner" else "writable by group or others") in err[
        0
    ]
    assert sorted(p.name for p in env.iterdir()) == [f"{key}.pkl"]  # nothing written there


def test_key_file_is_private(env, tmp_path, capsys) -> None:
    assert disk_cache.store("k", 1) and disk_cache.load("k") == (True, 1)
    key = disk_cache.key_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    os.chmod(key, 0o644)  # readable by others: anyone could forge entries
    disk_cache.reset()
    assert disk_cache.load("k") == (False, None)
    assert "readable by group or others" in capsys.readouterr().err
