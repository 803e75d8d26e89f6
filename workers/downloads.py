"""Official MNIST, Fashion-MNIST and CIFAR-10 files: find, download, verify, parse.

`load_official(name, data_dir)` returns what `workers.data.load_dataset` expects::

    (x_train, y_train, x_val, y_val, num_classes, input_shape, source)

x is uint8 with shape (N, *input_shape) (NCHW), y is int64, the official test split is the
validation split, and `source` records the directory, the file names and their md5s.

Where files are looked for (the first that applies is *the* directory; nothing else is
searched):

1. the `data_dir` argument: `data_dir/<name>/` if that directory exists, else `data_dir`
   itself if it already holds files of this data set, else `data_dir/<name>/`;
2. `$BATCHLAB_DATA_DIR/<name>/`;
3. the cache, `workers.dataset.cache_dir()/<name>/` (`$BATCHLAB_DATA_CACHE`, default
   `~/.cache/batchlab/data`).

Files missing from that directory are downloaded into it: urllib with a timeout, to a
temporary file in the same directory, md5-checked, then renamed into place atomically (a
concurrent reader never sees a partial file). Every file, local or downloaded, is checked
against its known md5; a mismatch is refused with `ChecksumError` and a downloaded file
that fails is deleted. When no mirror can be reached, `DownloadError` says
"download failed; place the files in DIR: <files> (<reason>)".

Three modules, one per responsibility: this one finds, downloads and verifies the files and
assembles the splits; `workers.downloads_formats` parses them (IDX; CIFAR-10's pickles with a
restricted unpickler that cannot run code; the tarball is read in place, no extraction to
disk); `workers.downloads_registry` says what they are (`REGISTRY`: file names, md5s,
mirror base URLs, a module-level dict re-exported here: tests replace entries with
`monkeypatch.setitem`, callers can also pass `mirrors=` / `md5=` overrides) and defines the
errors. The names callers use are all importable from here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import urllib.request
import uuid
import zlib
from collections.abc import Mapping, Sequence
from http.client import HTTPException
from pathlib import Path

import numpy as np

from workers.dataset import cache_dir
from workers.downloads_formats import load_cifar_batch, read_idx, read_idx_pair
from workers.downloads_registry import (
    CIFAR10_DIR,
    CIFAR10_TARBALL,
    CIFAR10_TEST,
    CIFAR10_TRAIN,
    REGISTRY,
    ChecksumError,
    DatasetError,
    DatasetFormatError,
    DatasetSpec,
    DownloadError,
    spec,
)

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "REGISTRY",
    "ChecksumError",
    "DatasetError",
    "DatasetFormatError",
    "DatasetSpec",
    "DownloadError",
    "load_cifar_batch",
    "load_official",
    "md5sum",
    "read_idx",
    "resolve_dir",
    "spec",
]

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0  # socket timeout of each connect / read, seconds
USER_AGENT = "batchlab-downloads/1"


# ----------------------------------------------------------------------------- public API


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


# ----------------------------------------------------------------------------- splits


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
    xtr, ytr = read_idx_pair(s, paths[0], paths[1])
    xte, yte = read_idx_pair(s, paths[2], paths[3])
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


def _load_cifar10(s: DatasetSpec, root: Path, timeout: float, download: bool):
    names = (*CIFAR10_TRAIN, CIFAR10_TEST)
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
    xtr = np.concatenate([batches[n][0] for n in CIFAR10_TRAIN])
    ytr = np.concatenate([batches[n][1] for n in CIFAR10_TRAIN])
    xte = np.concatenate([batches[CIFAR10_TEST][0]])  # concatenate: a writable copy
    yte = np.concatenate([batches[CIFAR10_TEST][1]])
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
