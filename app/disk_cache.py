"""A persistent cache of the app's heavy results (named queries, filter options, findings,
chart specs) on disk, shared by every server process of this user and by `app.warm`.

Why: Streamlit's caches live in one process; a server start or a new data version empties
them, and the findings alone take seconds to evaluate. A result written here once is read
back in milliseconds by the next process.

Correctness: every cached function takes the warehouse's data version among its arguments
(`warehouse.version.data_version`: a new, replaced or removed file changes it), and the key also
holds a fingerprint of the code that computes the results (the source of app/ and
warehouse/) and of the libraries that pickle them. A new version or new code is a new key:
a stale result is never read back, it only ages out.

Where: `BATCHLAB_APP_CACHE` (a directory; "off" disables the cache), else
`$XDG_CACHE_HOME/batchlab/app`, else `~/.cache/batchlab/app` - never under the storage
root, so a read-only warehouse stays untouched. Size: at most `BATCHLAB_APP_CACHE_MB`
(default 1024) MiB; the least recently used files go first. Concurrency: each entry is
written to a temporary file in the same directory and renamed into place (atomic on POSIX),
so readers in other processes see a whole entry or none; an unreadable entry is a miss.
The cache fails open: a directory that cannot be written only means no disk cache.

Security: an entry is a pickle, and unpickling runs code, so nothing is unpickled that this
user did not write. The directory must be owned by this user and not writable by group or
others (else: no disk cache, one warning line); every entry carries an HMAC-SHA256 of its
name and bytes under a per-user key (`BATCHLAB_APP_CACHE_KEY`, else
`$XDG_CONFIG_HOME/batchlab/app-cache.key`, else `~/.config/batchlab/app-cache.key`: 32
random bytes, created 0600 in a 0700 folder, refused when others could read or write it), checked
before unpickling; an entry that fails the check is a miss and is deleted. A cache folder
copied from elsewhere, or a file planted in it, never reaches `pickle.loads`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import inspect
import os
import pickle
import secrets
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MAX_MB = 1024
_SUFFIX = ".pkl"
MAGIC = b"BLC1"  # entry = magic + HMAC-SHA256(key, name NUL payload) + payload (a pickle)
_MAC_LEN = 32
_warned: set[str] = set()
_keys: dict[str, bytes] = {}  # key file -> key, read once per process
_PACKAGES = ("pandas", "numpy", "pyarrow", "duckdb", "altair", "streamlit", "scipy")
_lock = threading.Lock()
_writes = 0
# this process (tests, benchmarks); "refused": entries whose HMAC did not verify
STATS = {"hits": 0, "misses": 0, "writes": 0, "errors": 0, "refused": 0}


def cache_dir() -> Path | None:
    """The cache directory, or None when disabled (`BATCHLAB_APP_CACHE=off`)."""
    env = os.environ.get("BATCHLAB_APP_CACHE", "")
    if env.lower() in ("off", "0", "none", "false"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchlab" / "app"


def max_bytes() -> int:
    try:
        mb = float(os.environ.get("BATCHLAB_APP_CACHE_MB", DEFAULT_MAX_MB))
    except ValueError:
        mb = DEFAULT_MAX_MB
    return int(mb * 2**20)


def _warn_once(what: str, why: str) -> None:
    if what not in _warned:
        _warned.add(what)
        print(f"batchlab: app disk cache off: {why}", file=sys.stderr)


def _private(st: os.stat_result) -> str | None:
    """Why a file or folder with this stat is not this user's alone to write, or None."""
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def usable_dir(create: bool = False) -> Path | None:
    """The cache directory when it is safe to read (this user's, not group/other-writable);
    None when disabled, absent (and not `create`d) or unsafe (one warning line)."""
    d = cache_dir()
    if d is None:
        return None
    try:
        if create:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        why = _private(d.stat())
    except OSError:
        return None  # absent or not creatable: no cache (fails open)
    if why:
        hint = "set BATCHLAB_APP_CACHE to a folder only you can write"
        _warn_once(str(d), f"{d} is {why}; results are not cached on disk ({hint})")
        return None
    return d


def reset() -> None:
    """Forget the keys read and the warnings given (tests; a changed environment)."""
    _keys.clear()
    _warned.clear()


def key_file() -> Path:
    env = os.environ.get("BATCHLAB_APP_CACHE_KEY")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "batchlab" / "app-cache.key"


def _key() -> bytes | None:
    """This user's HMAC key (created on first use, then kept for the process); None when it
    cannot be used safely."""
    path = key_file()
    if str(path) in _keys:
        return _keys[str(path)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            key = fh.read()
    except OSError as exc:
        _warn_once(f"key:{path}", f"cannot use the key file {path}: {exc.strerror or exc}")
        return None
    why = _private(st) or (
        f"readable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
        if st.st_mode & 0o077
        else None
    )
    if why or len(key) < 32:
        _warn_once(f"key:{path}", f"the key file {path} is {why or 'too short'}; fix or delete it")
        return None
    _keys[str(path)] = key
    return key


def entry_mac(key: bytes, name: str, payload: bytes) -> bytes:
    return hmac.new(key, name.encode() + b"\0" + payload, hashlib.sha256).digest()


@functools.cache
def code_fingerprint() -> str:
    """A hash of the source that computes the cached results (app/ and warehouse/) and the
    versions of Python and of the libraries whose objects are pickled."""
    from importlib import metadata

    repo = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(sys.version.encode())
    for pkg in _PACKAGES:
        try:
            h.update(f"{pkg}={metadata.version(pkg)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{pkg}=none".encode())
    for folder in ("app", "warehouse"):
        for path in sorted((repo / folder).rglob("*.py")):
            h.update(str(path.relative_to(repo)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def entry_key(name: str, args: tuple) -> str | None:
    """The file name of one result, or None when its arguments have no stable text (an
    object printed with its address would give a new key each process)."""
    text = repr((name, args))
    if " at 0x" in text:
        return None
    return hashlib.sha256(f"{code_fingerprint()}|{text}".encode()).hexdigest()[:40]


def load(key: str) -> tuple[bool, Any]:
    """(True, value) for a stored entry, else (False, None). Marks the entry as used. An
    entry is unpickled only when its HMAC verifies under this user's key."""
    d = usable_dir()
    secret = _key() if d is not None else None
    if secret is None:
        return False, None
    path = d / f"{key}{_SUFFIX}"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            foreign = _private(os.fstat(fh.fileno()))
            data = fh.read()
    except FileNotFoundError:
        return False, None
    except OSError:  # a link, or unreadable: not ours
        foreign, data = "unreadable", b""
    mac, payload = data[len(MAGIC) : len(MAGIC) + _MAC_LEN], data[len(MAGIC) + _MAC_LEN :]
    if (
        foreign
        or not data.startswith(MAGIC)
        or not hmac.compare_digest(mac, entry_mac(secret, key, payload))
    ):
        STATS["errors"] += 1  # torn, foreign or planted: never unpickled; it goes
        STATS["refused"] += 1
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return False, None
    try:
        value = pickle.loads(payload)
    except Exception:  # written by us but not loadable here (a library changed): a miss
        STATS["errors"] += 1
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return False, None
    with contextlib.suppress(OSError):
        os.utime(path)  # least recently *used* goes first
    return True, value


def store(key: str, value: Any) -> bool:
    """Write one entry atomically; False when it could not be written (no error)."""
    global _writes
    d = usable_dir(create=True)
    secret = _key() if d is not None else None
    if secret is None:
        return False
    try:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC + entry_mac(secret, key, payload) + payload)
            os.replace(tmp, d / f"{key}{_SUFFIX}")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except Exception:
        STATS["errors"] += 1
        return False
    STATS["writes"] += 1
    with _lock:
        _writes += 1
        check = _writes % 16 == 1
    if check:
        prune()
    return True


def prune(limit_bytes: int | None = None) -> int:
    """Delete the least recently used entries until the cache holds at most `limit_bytes`
    (default `max_bytes()`); returns how many went. Temporary files older than an hour
    (a writer killed mid-write) go too."""
    import time

    d = usable_dir()
    if d is None:
        return 0
    limit = max_bytes() if limit_bytes is None else limit_bytes
    entries = []
    now = time.time()
    for p in d.iterdir():
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if p.name.startswith(".tmp-"):
            if now - st.st_mtime > 3600:
                p.unlink(missing_ok=True)
            continue
        if p.suffix == _SUFFIX:
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(s for _, s, _ in entries)
    gone = 0
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        p.unlink(missing_ok=True)
        total -= size
        gone += 1
    if gone:  # a warmed version may have lost entries: let the next warmer refill it
        for p in d.glob(".warm-*.done"):
            p.unlink(missing_ok=True)
    return gone


def clear() -> None:
    """Delete every entry (benchmarks: a cold start with nothing cached)."""
    d = usable_dir()
    if d is not None:
        for p in d.iterdir():
            if p.suffix == _SUFFIX or p.name.endswith(".done"):
                p.unlink(missing_ok=True)


def persisted(fn: F) -> F:
    """Cache `fn`'s results on disk, keyed on its name and the arguments whose names do
    not start with "_" (Streamlit's convention for unhashed arguments). Only for functions
    whose keyed arguments include the data version. Put it under `st.cache_data`: memory
    first, then disk, then the computation."""
    sig = inspect.signature(fn)
    name = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        keyed = tuple((k, v) for k, v in bound.arguments.items() if not k.startswith("_"))
        key = entry_key(name, keyed) if usable_dir(create=True) is not None else None
        if key is not None:
            hit, value = load(key)
            if hit:
                STATS["hits"] += 1
                return value
            STATS["misses"] += 1
        value = fn(*args, **kwargs)
        if key is not None:
            store(key, value)
        return value

    return wrapper  # type: ignore[return-value]
