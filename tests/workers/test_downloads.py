"""workers.downloads against a local HTTP server serving small fake official files.

Nothing here touches the internet: an autouse fixture points every registry mirror at a
closed local port and clears proxy settings; tests that download patch in the URL of a
`http.server` on 127.0.0.1 (ephemeral port, own thread) and the md5s of the fake files.
The last test reads the real MNIST from the shared data directory when it exists.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from workers import downloads
from workers.downloads import ChecksumError, DatasetFormatError, DownloadError

MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


def md5(b: bytes) -> str:
    return hashlib.md5(b, usedforsecurity=False).hexdigest()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}/"


# ----------------------------------------------------------------------------- fakes


def idx_bytes(arr: np.ndarray) -> bytes:
    assert arr.dtype == np.uint8
    return (
        struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.tobytes()
    )


def fake_idx_set(seed: int, n_train: int = 50, n_test: int = 10):
    """{file name: gz bytes} plus the arrays, for a small MNIST-format data set."""
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ytr = (np.arange(n_train) % 10).astype(np.uint8)
    xte = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yte = ((np.arange(n_test) * 3) % 10).astype(np.uint8)
    raw = {
        "train-images-idx3-ubyte": idx_bytes(xtr),
        "train-labels-idx1-ubyte": idx_bytes(ytr),
        "t10k-images-idx3-ubyte": idx_bytes(xte),
        "t10k-labels-idx1-ubyte": idx_bytes(yte),
    }
    files = {k + ".gz": gzip.compress(v, mtime=0) for k, v in raw.items()}
    return files, raw, (xtr, ytr, xte, yte)


def py2_pickle(obj) -> bytes:
    """A pickle as Python 2 wrote the official CIFAR-10 batches (protocol 2, str = bytes).

    (Python 3 pickles bytes at protocol 2 through `_codecs.encode`, which is not what the
    official files contain, so the opcodes are written by hand.)
    """
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:  # Python 2 str: SHORT_BINSTRING / BINSTRING
        out.extend(
            b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b
        )

    def w(o) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                w(v)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for v in o:
                w(v)
            out.extend(b"t")
        elif isinstance(o, bytes):
            string(o)
        elif o is None:
            out.extend(b"N")
        elif o is False:
            out.extend(b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            w((0,))
            string(b"b")
            out.extend(b"\x87R(")  # TUPLE3 REDUCE, then the state tuple
            w(1)
            w(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            w((b"u1", 0, 1))
            out.extend(b"R")
            w((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            w(False)
            string(o.tobytes())
            out.extend(b"tb")  # state tuple, BUILD the array
        else:
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    return bytes(out)


def fake_cifar(seed: int = 0, per_batch: int = 10):
    """({member name: pickle bytes}, tarball bytes, arrays) in the official layout."""
    rng = np.random.default_rng(seed)
    members, xs, ys = {}, {}, {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(per_batch) + i) % 10]
        members[name] = py2_pickle(
            {
                b"batch_label": f"batch {i}".encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
            }
        )
        xs[name], ys[name] = data, np.asarray(labels)
    members["batches.meta"] = py2_pickle({b"label_names": [b"airplane"] * 10, b"num_vis": 3072})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        # official member order is not sorted: put test_batch first
        for name in ["test_batch", *sorted(set(members) - {"test_batch"})]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(members[name])
            tf.addfile(info, io.BytesIO(members[name]))
    return members, buf.getvalue(), (xs, ys)


# ----------------------------------------------------------------------------- server


class FakeServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # URL path -> body
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def serve(self, prefix: str, files: dict[str, bytes]) -> str:
        for name, body in files.items():
            self.files[f"/{prefix}/{name}"] = body
        return f"{self.url}/{prefix}/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
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


def patch_registry(monkeypatch, name: str, *, mirrors=None, md5s=None) -> None:
    spec = downloads.REGISTRY[name]
    new = dataclasses.replace(
        spec,
        mirrors=tuple(mirrors) if mirrors is not None else spec.mirrors,
        md5={**spec.md5, **(md5s or {})},
    )
    monkeypatch.setitem(downloads.REGISTRY, name, new)


def no_partials(d: Path) -> bool:
    return not any(p.name.endswith(".part") for p in d.rglob("*"))


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


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown official data set"):
        downloads.load_official("imagenet")


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
