"""workers.downloads against a local HTTP server serving small fake official files: the
download, the cache, where files are looked up, checksums, mirrors and the errors that say
where to place the files. (The file formats: test_download_formats.py.)

Nothing here touches the internet: the `isolated_downloads` fixture (tests/workers/conftest.py)
points every registry mirror at a closed local port and clears proxy settings; tests that
download patch in the URL of a `http.server` on 127.0.0.1 (ephemeral port, own thread) and the
md5s of the fake files.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.workers.download_helpers import (
    MNIST_FILES,
    fake_idx_set,
    md5,
    no_partials,
    patch_registry,
)
from workers import downloads
from workers.downloads import ChecksumError, DownloadError

pytestmark = pytest.mark.usefixtures("isolated_downloads")


# ----------------------------------------------------------------------------- IDX


def test_download_parse_and_cache(server, monkeypatch, tmp_path):
    files, _, (xtr, ytr, xte, yte) = fake_idx_set(0)
    url = server.serve("mnist", files)
    patch_registry(monkeypatch, "mnist", mirrors=[url], md5s={k: md5(v) for k, v in files.items()})

    x, y, xv, yv, k, shape, source = downloads.load_official("mnist")
    cache = tmp_path / "cache" / "mnist"
    assert sorted(server.requests) == sorted(f"/mnist/{f}" for f in MNIST_FILES)
    assert x.shape == (50, 1, 28, 28) and xv.shape == (10, 1, 28, 28)
    assert x.dtype == np.uint8 and y.dtype == np.int64 and yv.dtype == np.int64
    assert (k, shape) == (10, (1, 28, 28))
    np.testing.assert_array_equal(x[:, 0], xtr)
    np.testing.assert_array_equal(y, ytr)
    np.testing.assert_array_equal(xv[:, 0], xte)
    np.testing.assert_array_equal(yv, yte)
    assert x.flags.writeable
    assert source["dir"] == str(cache)
    assert source["files"] == {f: md5(files[f]) for f in MNIST_FILES}
    assert "unverified" not in source
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_FILES)

    # Second load: from the cache, no request, and it works with the server gone.
    server.requests.clear()
    server.stop()
    x2, y2, *_, source2 = downloads.load_official("mnist")
    assert server.requests == []
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert source2 == source


def test_only_missing_files_are_downloaded(server, monkeypatch, tmp_path):
    files, _, _ = fake_idx_set(1)
    url = server.serve("mnist", files)
    patch_registry(monkeypatch, "mnist", mirrors=[url], md5s={k: md5(v) for k, v in files.items()})
    d = tmp_path / "mine"
    d.mkdir()
    (d / "train-images-idx3-ubyte.gz").write_bytes(files["train-images-idx3-ubyte.gz"])
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(files["t10k-images-idx3-ubyte.gz"])

    *_, source = downloads.load_official("mnist", d)  # d holds mnist files: used as is
    assert sorted(server.requests) == [
        "/mnist/t10k-labels-idx1-ubyte.gz",
        "/mnist/train-labels-idx1-ubyte.gz",
    ]
    assert source["dir"] == str(d)
    assert all((d / f).is_file() for f in MNIST_FILES)


def test_lookup_order(server, monkeypatch, tmp_path):
    files, _, _ = fake_idx_set(2)
    url = server.serve("fashion", files)
    patch_registry(
        monkeypatch, "fashion-mnist", mirrors=[url], md5s={k: md5(v) for k, v in files.items()}
    )

    # (2) $BATCHLAB_DATA_DIR/<name>/ when no data_dir is given
    env_dir = tmp_path / "env"
    monkeypatch.setenv("BATCHLAB_DATA_DIR", str(env_dir))
    assert downloads.resolve_dir("fashion-mnist") == env_dir / "fashion-mnist"
    *_, source = downloads.load_official("fashion-mnist")
    assert source["dir"] == str(env_dir / "fashion-mnist")
    assert (env_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert not (tmp_path / "cache").exists()

    # (1) data_dir wins over the environment: data_dir/<name>/ ...
    root = tmp_path / "root"
    assert downloads.resolve_dir("fashion-mnist", root) == root / "fashion-mnist"
    server.requests.clear()
    *_, source = downloads.load_official("fashion-mnist", root)
    assert source["dir"] == str(root / "fashion-mnist") and len(server.requests) == 4
    # ... or data_dir itself when it holds the files
    assert downloads.resolve_dir("fashion-mnist", root / "fashion-mnist") == root / "fashion-mnist"

    # (3) the cache, workers.data.cache_dir()/<name>/
    monkeypatch.delenv("BATCHLAB_DATA_DIR")
    assert downloads.resolve_dir("fashion-mnist") == tmp_path / "cache" / "fashion-mnist"


def test_wrong_checksum_from_server_is_refused_and_deleted(server, monkeypatch, tmp_path):
    files, _, _ = fake_idx_set(3)
    url = server.serve("mnist", files)
    good = {k: md5(v) for k, v in files.items()}
    wrong = "0" * 32
    patch_registry(
        monkeypatch, "mnist", mirrors=[url], md5s={**good, "train-labels-idx1-ubyte.gz": wrong}
    )
    with pytest.raises(ChecksumError) as e:
        downloads.load_official("mnist")
    msg = str(e.value)
    assert "train-labels-idx1-ubyte.gz" in msg
    assert wrong in msg and good["train-labels-idx1-ubyte.gz"] in msg
    cache = tmp_path / "cache" / "mnist"
    assert not (cache / "train-labels-idx1-ubyte.gz").exists()
    assert no_partials(cache)


def test_wrong_checksum_on_one_mirror_falls_back_to_the_next(server, monkeypatch, tmp_path):
    files, _, _ = fake_idx_set(4)
    bad = {k: v[:-1] + bytes([v[-1] ^ 1]) for k, v in files.items()}
    bad_url = server.serve("bad", bad)
    good_url = server.serve("good", files)
    patch_registry(
        monkeypatch,
        "mnist",
        mirrors=[bad_url, good_url],
        md5s={k: md5(v) for k, v in files.items()},
    )
    *_, source = downloads.load_official("mnist")
    assert source["files"] == {k: md5(v) for k, v in files.items()}
    assert no_partials(tmp_path / "cache")


def test_unreachable_server_says_where_to_place_files(tmp_path):
    # the autouse fixture made every mirror a closed port
    with pytest.raises(DownloadError) as e:
        downloads.load_official("mnist")
    msg = str(e.value)
    where = tmp_path / "cache" / "mnist"
    assert f"download failed; place the files in {where}" in msg
    for f in MNIST_FILES:
        assert f in msg
    assert "refused" in msg.lower() or "errno" in msg.lower()  # the underlying reason
    assert no_partials(tmp_path / "cache")


def test_download_disabled_and_404(server, monkeypatch, tmp_path):
    with pytest.raises(
        DownloadError, match=r"download failed; place the files in .*downloads are disabled"
    ):
        downloads.load_official("cifar10", download=False)
    url = server.serve("empty", {})
    with pytest.raises(
        DownloadError, match=r"download failed; place the files in .*cifar-10-python\.tar\.gz.*404"
    ):
        downloads.load_official("cifar10", mirrors=[url])
    assert no_partials(tmp_path / "cache")


def test_corrupted_local_file_is_refused(server, monkeypatch, tmp_path):
    files, _, _ = fake_idx_set(5)
    url = server.serve("mnist", files)
    patch_registry(monkeypatch, "mnist", mirrors=[url], md5s={k: md5(v) for k, v in files.items()})
    d = tmp_path / "local" / "mnist"
    d.mkdir(parents=True)
    for k, v in files.items():
        (d / k).write_bytes(v)
    body = bytearray(files["t10k-images-idx3-ubyte.gz"])
    body[len(body) // 2] ^= 0xFF
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(bytes(body))

    with pytest.raises(ChecksumError) as e:
        downloads.load_official("mnist", tmp_path / "local")
    msg = str(e.value)
    assert str(d / "t10k-images-idx3-ubyte.gz") in msg
    assert md5(files["t10k-images-idx3-ubyte.gz"]) in msg and md5(bytes(body)) in msg
    assert server.requests == []  # refused, not silently replaced


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown official data set"):
        downloads.load_official("imagenet")
