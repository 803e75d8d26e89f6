"""The official files' formats, parsed: IDX (MNIST, Fashion-MNIST) and CIFAR-10's pickles.

MNIST / Fashion-MNIST IDX (`.gz` or un-gzipped) are parsed with numpy, magic number, dims and
length checked. CIFAR-10's official "python version" is pickle; it is read with
`_RestrictedUnpickler`, which resolves only the numpy globals needed to rebuild a uint8
ndarray (`numpy.core.multiarray._reconstruct`, `numpy.ndarray`, `numpy.dtype`) and refuses
any other global, so a tampered file cannot run code. dict, list, bytes, str and int come
from plain pickle opcodes and need no global. Every malformed file is a DatasetFormatError.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from workers.downloads_registry import DatasetFormatError, DatasetSpec

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

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


def read_idx_pair(s: DatasetSpec, images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (N, *s.input_shape), y int64) from an images and a labels IDX file of `s`."""
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
