"""Official MNIST, Fashion-MNIST and CIFAR-10 files: find, download, verify, parse.

`load_official(name, data_dir)` returns what `workers.data._raw` expects::

    (x_train, y_train, x_val, y_val, num_classes, input_shape, source)

x is uint8 with shape (N, *input_shape) (NCHW), y is int64, the official test split is the
validation split, and `source` records the directory, the file names and their md5s.

Where files are looked for (the first that applies is *the* directory; nothing else is
searched):

1. the `data_dir` argument: `data_dir/<name>/` if that directory exists, else `data_dir`
   itself if it already holds files of this data set, else `data_dir/<name>/`;
2. `$BATCHLAB_DATA_DIR/<name>/`;
3. the cache, `workers.data.cache_dir()/<name>/` (`$BATCHLAB_DATA_CACHE`, default
   `~/.cache/batchlab/data`).

Files missing from that directory are downloaded into it: urllib with a timeout, to a
temporary file in the same directory, md5-checked, then renamed into place atomically (a
concurrent reader never sees a partial file). Every file, local or downloaded, is checked
against its known md5; a mismatch is refused with `ChecksumError` and a downloaded file
that fails is deleted. When no mirror can be reached, `DownloadError` says
"download failed; place the files in DIR: <files> (<reason>)".

Formats: MNIST / Fashion-MNIST IDX (`.gz` or un-gzipped) are parsed with numpy, magic
number, dims and length checked. CIFAR-10's official "python version" is pickle; it is
read with `_RestrictedUnpickler`, which resolves only the numpy globals needed to rebuild
a uint8 ndarray (`numpy.core.multiarray._reconstruct`, `numpy.ndarray`, `numpy.dtype`) and
refuses any other global, so a tampered file cannot run code. dict, list, bytes, str and
int come from plain pickle opcodes and need no global. The tarball is read in place (no
extraction to disk).

`REGISTRY` (file names, md5s, mirror base URLs) is a module-level dict; tests replace
entries with `monkeypatch.setitem`, callers can also pass `mirrors=` / `md5=` overrides.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import struct
import tarfile
import urllib.request
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.client import HTTPException
from pathlib import Path
from typing import ClassVar

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0  # socket timeout of each connect / read, seconds
USER_AGENT = "batchlab-downloads/1"


class DatasetError(RuntimeError):
    """Base of the errors raised here."""


class ChecksumError(DatasetError):
    """A file's md5 differs from the registry's."""


class DownloadError(DatasetError):
    """Files are missing and could not be downloaded."""


class DatasetFormatError(DatasetError):
    """A file is not in the format expected (malformed IDX, bad CIFAR-10 pickle)."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str  # "idx" or "cifar10-python"
    files: tuple[str, ...]  # what is downloaded / what to place in the directory
    md5: Mapping[str, str]  # known md5 per file name (also un-gzipped / extracted forms)
    mirrors: tuple[str, ...]  # base URLs; the file name is appended
    num_classes: int
    input_shape: tuple[int, ...]
    homepage: str = ""
    notes: str = ""
    parts: tuple[str, ...] = field(default=())  # idx: the four IDX files without ".gz"


_IDX_PARTS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST = "test_batch"

REGISTRY: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        format="idx",
        parts=_IDX_PARTS,
        files=tuple(p + ".gz" for p in _IDX_PARTS),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            # the decompressed IDX files
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        num_classes=10,
        input_shape=(1, 28, 28),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        format="idx",
        parts=_IDX_PARTS,
        files=tuple(p + ".gz" for p in _IDX_PARTS),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        num_classes=10,
        input_shape=(1, 28, 28),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        notes="No md5 is registered for the un-gzipped files: they are parsed and their md5 "
        "recorded, but not verified.",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        format="cifar10-python",
        files=(CIFAR10_TARBALL,),
        md5={
            CIFAR10_TARBALL: "c58f30108f718f92721af3b95e74349a",
            # the extracted batches (the values torchvision checks)
            f"{CIFAR10_DIR}/data_batch_1": "c99cafc152244af753f735de768cd75f",
            f"{CIFAR10_DIR}/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            f"{CIFAR10_DIR}/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            f"{CIFAR10_DIR}/data_batch_4": "634d18415352ddfa80567beed471001a",
            f"{CIFAR10_DIR}/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            f"{CIFAR10_DIR}/test_batch": "40351d587109b95175f43aff81a1287e",
        },
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        num_classes=10,
        input_shape=(3, 32, 32),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}


# ----------------------------------------------------------------------------- public API


def spec(
    name: str,
    *,
    mirrors: Sequence[str] | None = None,
    md5: Mapping[str, str] | None = None,
) -> DatasetSpec:
    """The registry entry of `name`, with `mirrors` replacing and `md5` updating its own."""
    try:
        s = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown official data set {name!r}; known: {sorted(REGISTRY)}") from None
    if mirrors is not None:
        s = replace(s, mirrors=tuple(mirrors))
    if md5 is not None:
        s = replace(s, md5={**s.md5, **md5})
    return s


def resolve_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The one directory where `name`'s files are looked for and downloaded to."""
    s = spec(name)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        sub = root / name
        if sub.is_dir():
            return sub
        if _holds_any(s, root):
            return root
        return sub
    env = os.environ.get("BATCHLAB_DATA_DIR")
    if env:
        return Path(env).expanduser() / name
    from workers.data import cache_dir  # lazy: workers.data imports this module lazily

    return cache_dir() / name


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_official(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    md5: Mapping[str, str] | None = None,
    timeout: float | None = None,
    download: bool = True,
):
    """(x_train, y_train, x_val, y_val, num_classes, input_shape, source) of `name`.

    `name` is "mnist", "fashion-mnist" or "cifar10". Missing files are downloaded (unless
    `download=False`) into `resolve_dir(name, data_dir)`. Raises ChecksumError,
    DownloadError or DatasetFormatError (all DatasetError).
    """
    s = spec(name, mirrors=mirrors, md5=md5)
    root = resolve_dir(name, data_dir)
    t = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
    if s.format == "idx":
        return _load_idx_dataset(s, root, t, download)
    if s.format == "cifar10-python":
        return _load_cifar10(s, root, t, download)
    raise ValueError(f"{name}: unknown format {s.format!r}")


# ----------------------------------------------------------------------------- files


def _holds_any(s: DatasetSpec, root: Path) -> bool:
    if s.format == "idx":
        return any((root / n).is_file() for p in s.parts for n in (p + ".gz", p))
    return (root / CIFAR10_TARBALL).is_file() or (root / CIFAR10_DIR).is_dir()


def _verify(s: DatasetSpec, root: Path, rel: str) -> str:
    """md5 of root/rel; ChecksumError when a known md5 differs."""
    path = root / rel
    actual = md5sum(path)
    expected = s.md5.get(rel)
    if expected is not None and actual != expected.lower():
        raise ChecksumError(
            f"checksum mismatch for {path}: expected md5 {expected}, got {actual}; it is "
            f"not the official {s.name} file (corrupt or truncated?): delete it to have it "
            f"downloaded again, or replace it with the official file"
        )
    if expected is None:
        log.warning("%s: no known md5, file not verified (md5 %s)", path, actual)
    return actual


def _download_failed(s: DatasetSpec, root: Path, reason: str) -> DownloadError:
    return DownloadError(
        f"download failed; place the files in {root}: {', '.join(s.files)} ({reason})"
    )


def _download(s: DatasetSpec, root: Path, fname: str, timeout: float, enabled: bool) -> str:
    """Download `fname` into root (tmp file, md5 check, atomic rename); return its md5."""
    if not enabled:
        raise _download_failed(s, root, f"{fname} is missing and downloads are disabled")
    if not s.mirrors:
        raise _download_failed(s, root, f"{fname} is missing and no mirror is configured")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _download_failed(s, root, f"cannot create {root}: {e}") from e
    expected = s.md5.get(fname)
    failures: list[str] = []
    mismatches: list[str] = []
    last_exc: BaseException | None = None
    for base in s.mirrors:
        url = base if base.endswith("/") else base + "/"
        url += fname
        tmp = root / f".{fname}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
        try:
            log.info("downloading %s -> %s", url, root / fname)
            h = hashlib.md5(usedforsecurity=False)
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout) as r, open(tmp, "wb") as f:
                while block := r.read(1 << 20):
                    h.update(block)
                    f.write(block)
            actual = h.hexdigest()
            if expected is not None and actual != expected.lower():
                mismatches.append(
                    f"checksum mismatch for {fname} downloaded from {url}: "
                    f"expected md5 {expected}, got {actual}"
                )
                continue  # the finally clause deletes the temporary file
            os.replace(tmp, root / fname)  # atomic within one directory
            return actual
        except (OSError, HTTPException, ValueError) as e:  # URLError is an OSError
            failures.append(f"{url}: {e}")
            last_exc = e
        finally:
            tmp.unlink(missing_ok=True)
    if mismatches:
        raise ChecksumError(
            "; ".join(mismatches)
            + f"; the downloaded file was deleted (place the official file in {root})"
            + (f"; other mirrors: {'; '.join(failures)}" if failures else "")
        )
    raise _download_failed(s, root, "; ".join(failures)) from last_exc


# ----------------------------------------------------------------------------- IDX

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not, detected from its first bytes).

    The header is 2 zero bytes, a type code (0x08 = uint8, ...), the number of dims, then
    one big-endian uint32 per dim; the data must fill the rest exactly. `ndim` is the number
    of dims expected (3 for images, 1 for labels). Returns a native-endian, writable array.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DatasetFormatError(f"{path}: not a readable IDX file ({e})") from e
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: malformed IDX file: {len(data)} bytes, no header")
    magic = int.from_bytes(data[:4], "big")
    code, nd = data[2], data[3]
    want = f" (expected 0x{0x0800 + ndim:08x}, uint8 with {ndim} dims)" if ndim else ""
    if data[:2] != b"\0\0" or code not in _IDX_DTYPES or nd == 0 or (ndim and nd != ndim):
        raise DatasetFormatError(
            f"{path}: malformed IDX file: magic number 0x{magic:08x}{want}"
            + (" (a gzip file that is not IDX inside?)" if gz else "")
        )
    header = 4 + 4 * nd
    if len(data) < header:
        raise DatasetFormatError(f"{path}: malformed IDX file: truncated header ({nd} dims)")
    dims = struct.unpack(f">{nd}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != count * dtype.itemsize:
        raise DatasetFormatError(
            f"{path}: malformed IDX file: header declares dims {dims} "
            f"({count * dtype.itemsize} data bytes) but {len(data) - header} data bytes follow"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _idx_pair(s: DatasetSpec, images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, ndim=3)
    y = read_idx(labels, ndim=1)
    h, w = s.input_shape[1:]
    if x.dtype != np.uint8 or x.shape[1:] != (h, w):
        raise DatasetFormatError(
            f"{images}: expected uint8 images of {h}x{w}, got {x.dtype} {x.shape[1:]}"
        )
    if y.dtype != np.uint8:
        raise DatasetFormatError(f"{labels}: expected uint8 labels, got {y.dtype}")
    if len(x) != len(y):
        raise DatasetFormatError(f"{images} has {len(x)} images but {labels} {len(y)} labels")
    if len(y) and int(y.max()) >= s.num_classes:
        raise DatasetFormatError(f"{labels}: label {int(y.max())} >= {s.num_classes} classes")
    return x.reshape(len(x), *s.input_shape), y.astype(np.int64)


def _load_idx_dataset(s: DatasetSpec, root: Path, timeout: float, download: bool):
    found: dict[str, str] = {}  # part -> file name present in root
    for part in s.parts:
        for fname in (part + ".gz", part):
            if (root / fname).is_file():
                found[part] = fname
                break
    # Refuse corrupt local files before spending time on downloads.
    md5s = {found[p]: _verify(s, root, found[p]) for p in s.parts if p in found}
    for part in s.parts:
        if part not in found:
            found[part] = part + ".gz"
            md5s[found[part]] = _download(s, root, found[part], timeout, download)
    paths = [root / found[p] for p in s.parts]
    xtr, ytr = _idx_pair(s, paths[0], paths[1])
    xte, yte = _idx_pair(s, paths[2], paths[3])
    source = {
        "dataset": s.name,
        "format": "idx",
        "dir": str(root),
        "files": {found[p]: md5s[found[p]] for p in s.parts},
    }
    unverified = [f for f in source["files"] if f not in s.md5]
    if unverified:
        source["unverified"] = unverified
    return xtr, ytr, xte, yte, s.num_classes, s.input_shape, source


# ----------------------------------------------------------------------------- CIFAR-10


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR-10 batches: only the globals that rebuild an ndarray.

    The official files are Python 2 pickles of a dict {b"batch_label": bytes,
    b"labels": list[int], b"data": uint8 ndarray (N, 3072), b"filenames": list[bytes]}.
    dict, list, bytes, str and int are built by pickle opcodes without any global; the
    ndarray needs `_reconstruct`, `ndarray` and `dtype`. Every other global (os.system,
    builtins.eval, ...) raises UnpicklingError, so a tampered file cannot execute code.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR-10 batch"
            ) from None


def load_cifar_batch(f, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (N, 3, 32, 32), y int64) from one pickled CIFAR-10 batch (file object)."""
    try:
        d = _RestrictedUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure is a format error of that file
        raise DatasetFormatError(f"{where}: not a valid CIFAR-10 batch ({e})") from e
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{where}: not a valid CIFAR-10 batch (not a dict)")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise DatasetFormatError(f"{where}: 'data' must be uint8 (N, 3072), got {desc}")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DatasetFormatError(f"{where}: 'labels' must be a list of ints")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(data):
        raise DatasetFormatError(f"{where}: {len(data)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= 10):
        raise DatasetFormatError(f"{where}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), y


def _load_cifar10(s: DatasetSpec, root: Path, timeout: float, download: bool):
    names = (*_CIFAR10_TRAIN, _CIFAR10_TEST)
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    extracted = root / CIFAR10_DIR
    if all((extracted / n).is_file() for n in names):
        files = {f"{CIFAR10_DIR}/{n}": _verify(s, root, f"{CIFAR10_DIR}/{n}") for n in names}
        for n in names:
            with open(extracted / n, "rb") as f:
                batches[n] = load_cifar_batch(f, str(extracted / n))
    else:
        tarball = root / CIFAR10_TARBALL
        if tarball.is_file():
            files = {CIFAR10_TARBALL: _verify(s, root, CIFAR10_TARBALL)}
        else:
            files = {CIFAR10_TARBALL: _download(s, root, CIFAR10_TARBALL, timeout, download)}
        wanted = {f"{CIFAR10_DIR}/{n}": n for n in names}
        try:
            # One streaming pass (members are in no particular order in the tarball);
            # members are read in memory, nothing is extracted to disk.
            with tarfile.open(tarball, "r|gz") as tf:
                for m in tf:
                    n = wanted.get(m.name.removeprefix("./"))
                    if n is not None and m.isfile():
                        f = tf.extractfile(m)
                        assert f is not None
                        batches[n] = load_cifar_batch(f, f"{tarball}:{m.name}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DatasetFormatError(f"{tarball}: not a readable tar.gz ({e})") from e
        missing = [f"{CIFAR10_DIR}/{n}" for n in names if n not in batches]
        if missing:
            raise DatasetFormatError(f"{tarball}: missing members {missing}")
    xtr = np.concatenate([batches[n][0] for n in _CIFAR10_TRAIN])
    ytr = np.concatenate([batches[n][1] for n in _CIFAR10_TRAIN])
    xte = np.concatenate([batches[_CIFAR10_TEST][0]])  # concatenate: a writable copy
    yte = np.concatenate([batches[_CIFAR10_TEST][1]])
    source = {"dataset": s.name, "format": "cifar10-python", "dir": str(root), "files": files}
    unverified = [f for f in files if f not in s.md5]
    if unverified:
        source["unverified"] = unverified
    return xtr, ytr, xte, yte, s.num_classes, s.input_shape, source


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m workers.downloads NAME... [--data-dir DIR]`: fetch and verify."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("names", nargs="+", choices=sorted(REGISTRY))
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.names:
        xtr, _, xte, _, _, _, source = load_official(name, args.data_dir)
        print(json.dumps({**source, "n_train": len(xtr), "n_val": len(xte)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
