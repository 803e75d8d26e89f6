"""Fakes for the workers.downloads tests (tests/workers/test_downloads.py and
test_download_formats.py): small data sets in the official MNIST (IDX) and CIFAR-10 (Python 2
pickles in a tarball) formats, a local HTTP server that serves them, and registry patching.
The fixtures built on them (`server`, `isolated_downloads`) are in tests/workers/conftest.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np

from workers import downloads

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
