"""workers.downloads' file formats: MNIST's IDX files (gzipped or not, malformed), the
CIFAR-10 tarball of Python 2 pickles (and its extracted directory), pickles that are not
CIFAR-10 batches, and the real MNIST from the shared data directory when it exists. (The
download, cache and checksums: test_downloads.py.)

Nothing here touches the internet: see test_downloads.py and tests/workers/conftest.py.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.workers.download_helpers import (
    MNIST_FILES,
    fake_cifar,
    fake_idx_set,
    idx_bytes,
    md5,
    patch_registry,
    py2_pickle,
)
from workers import downloads
from workers.downloads import ChecksumError, DatasetFormatError

pytestmark = pytest.mark.usefixtures("isolated_downloads")


# ----------------------------------------------------------------------------- IDX


def test_ungzipped_files_are_accepted(monkeypatch, tmp_path):
    _, raw, (xtr, ytr, xte, yte) = fake_idx_set(6)
    d = tmp_path / "raw"
    d.mkdir()
    for k, v in raw.items():
        (d / k).write_bytes(v)
    patch_registry(monkeypatch, "mnist", md5s={k: md5(v) for k, v in raw.items()})
    x, y, xv, yv, *_, source = downloads.load_official("mnist", d)
    np.testing.assert_array_equal(x[:, 0], xtr)
    np.testing.assert_array_equal(y, ytr)
    np.testing.assert_array_equal(xv[:, 0], xte)
    np.testing.assert_array_equal(yv, yte)
    assert source["files"] == {k: md5(v) for k, v in raw.items()}

    # fashion-mnist registers no md5 for un-gzipped files: parsed, recorded as unverified
    f = tmp_path / "f" / "fashion-mnist"
    f.mkdir(parents=True)
    for k, v in raw.items():
        (f / k).write_bytes(v)
    *_, source = downloads.load_official("fashion-mnist", tmp_path / "f")
    assert sorted(source["unverified"]) == sorted(raw)


def test_malformed_idx_gives_a_clear_error(monkeypatch, tmp_path):
    p = tmp_path / "bad-magic"
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 1) + struct.pack(">I", 3) + b"\0\1\2")
    with pytest.raises(
        DatasetFormatError,
        match=r"bad-magic: malformed IDX file: magic number 0x00000801 \(expected 0x00000803",
    ):
        downloads.read_idx(p, ndim=3)

    p = tmp_path / "short"
    p.write_bytes(idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-7])
    with pytest.raises(
        DatasetFormatError, match=r"short: malformed IDX file: header declares dims \(5, 28, 28\)"
    ):
        downloads.read_idx(p)

    p = tmp_path / "junk.gz"
    p.write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(DatasetFormatError, match=r"junk\.gz: not a readable IDX file"):
        downloads.read_idx(p)

    p = tmp_path / "tiny"
    p.write_bytes(b"\0\0")
    with pytest.raises(DatasetFormatError, match="tiny: malformed IDX file"):
        downloads.read_idx(p)

    # Through load_official: the checksum matches (patched) but the contents do not parse.
    files, _, _ = fake_idx_set(7)
    files["train-labels-idx1-ubyte.gz"] = gzip.compress(b"\0\0\x08\x03garbage", mtime=0)
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for k, v in files.items():
        (d / k).write_bytes(v)
    patch_registry(monkeypatch, "mnist", md5s={k: md5(v) for k, v in files.items()})
    with pytest.raises(
        DatasetFormatError,
        match=r"train-labels-idx1-ubyte\.gz: malformed IDX file: magic number 0x00000803",
    ):
        downloads.load_official("mnist", tmp_path / "data")


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar10_tarball_roundtrip(server, monkeypatch, tmp_path):
    members, tarball, (xs, ys) = fake_cifar()
    url = server.serve("kriz", {"cifar-10-python.tar.gz": tarball})
    patch_registry(
        monkeypatch, "cifar10", mirrors=[url], md5s={"cifar-10-python.tar.gz": md5(tarball)}
    )

    x, y, xv, yv, k, shape, source = downloads.load_official("cifar10")
    assert server.requests == ["/kriz/cifar-10-python.tar.gz"]
    assert x.shape == (50, 3, 32, 32) and xv.shape == (10, 3, 32, 32)
    assert x.dtype == np.uint8 and y.dtype == np.int64 and yv.dtype == np.int64
    assert (k, shape) == (10, (3, 32, 32))
    train = [f"data_batch_{i}" for i in range(1, 6)]
    np.testing.assert_array_equal(y, np.concatenate([ys[n] for n in train]))
    np.testing.assert_array_equal(yv, ys["test_batch"])
    # NCHW: each row is 1024 red, then 1024 green, then 1024 blue values, row-major.
    row = xs["data_batch_1"][3]
    np.testing.assert_array_equal(x[3, 1], row[1024:2048].reshape(32, 32))
    np.testing.assert_array_equal(xv.reshape(10, -1), xs["test_batch"])
    assert x.flags.writeable and xv.flags.writeable
    assert source["files"] == {"cifar-10-python.tar.gz": md5(tarball)}
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz").is_file()

    server.requests.clear()
    downloads.load_official("cifar10")
    assert server.requests == []

    # The extracted directory is accepted too (its files checked against their md5s).
    d = tmp_path / "extracted" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, body in members.items():
        (d / name).write_bytes(body)
    patch_registry(
        monkeypatch,
        "cifar10",
        md5s={f"cifar-10-batches-py/{n}": md5(b) for n, b in members.items()},
    )
    x2, y2, xv2, yv2, *_, source2 = downloads.load_official("cifar10", tmp_path / "extracted")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(xv2, xv)
    np.testing.assert_array_equal(yv2, yv)
    assert source2["dir"] == str(tmp_path / "extracted")
    assert len(source2["files"]) == 6

    (d / "data_batch_2").write_bytes(members["data_batch_2"][:-1] + b"!")
    with pytest.raises(ChecksumError, match="data_batch_2"):
        downloads.load_official("cifar10", tmp_path / "extracted")


def test_cifar10_pickle_with_foreign_globals_is_refused(monkeypatch, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())  # harmless, but not something a CIFAR batch contains

    with pytest.raises(DatasetFormatError, match="getcwd is not allowed"):
        downloads.load_cifar_batch(io.BytesIO(pickle.dumps({b"data": Evil()})), "evil")
    with pytest.raises(DatasetFormatError, match="'data' must be uint8"):
        downloads.load_cifar_batch(io.BytesIO(py2_pickle({b"data": [1, 2], b"labels": []})), "x")

    # A tarball member that is not a CIFAR batch, checksum patched to match: format error.
    members, _, _ = fake_cifar(1)
    members["data_batch_3"] = pickle.dumps({b"x": Evil()}, protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, body in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    d = tmp_path / "c" / "cifar10"
    d.mkdir(parents=True)
    (d / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    patch_registry(monkeypatch, "cifar10", md5s={"cifar-10-python.tar.gz": md5(buf.getvalue())})
    with pytest.raises(DatasetFormatError, match="data_batch_3: not a valid CIFAR-10 batch"):
        downloads.load_official("cifar10", tmp_path / "c")


# ----------------------------------------------------------------------------- real MNIST


def _shared_mnist() -> Path | None:
    roots = []
    if os.environ.get("BATCHLAB_SHARED_DATA"):
        env = Path(os.environ["BATCHLAB_SHARED_DATA"])
        roots += [env / "mnist", env]
    roots.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist")
    for d in roots:
        if all((d / f).is_file() or (d / f.removesuffix(".gz")).is_file() for f in MNIST_FILES):
            return d
    return None


def test_real_mnist_from_shared_data():
    d = _shared_mnist()
    if d is None:
        pytest.skip("no shared MNIST directory (BATCHLAB_SHARED_DATA or ../shared/data/mnist)")
    x, y, xv, yv, k, shape, source = downloads.load_official("mnist", d)
    assert x.shape == (60000, 1, 28, 28) and xv.shape == (10000, 1, 28, 28)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert (k, shape) == (10, (1, 28, 28))
    assert source["dir"] == str(d) and "unverified" not in source
    train_counts, test_counts = np.bincount(y, minlength=10), np.bincount(yv, minlength=10)
    assert len(train_counts) == 10 and len(test_counts) == 10
    assert train_counts.min() > 5000 and train_counts.max() < 7000, train_counts
    assert test_counts.min() > 800 and test_counts.max() < 1200, test_counts
    assert 30 < x.mean() < 40  # MNIST's mean pixel is about 33.3
