"""Reading a study's files safely, for the importers: never through a link out of the
imported folder, every undecodable or malformed file and every bad value a one-line
`ImportError_` naming the file (and the trial, field and value); secret-looking keys found
and dropped."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ImportError_(ValueError):
    """A source that cannot be imported as asked (the message says why and what to pass)."""


# Key names that look like credentials (case-insensitive, by word: `hf_token`, `apiKey`,
# `db_password`, `AWS_SECRET_ACCESS_KEY`; not `max_tokens`): never copied into the warehouse.
_SECRET_WORDS = {
    "password",
    "passwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "credential",
    "credentials",
    "apikey",
    "cookie",
    "authorization",
}
_SECRET_PAIRS = {
    ("api", "key"),
    ("access", "key"),
    ("private", "key"),
    ("secret", "key"),
    ("auth", "key"),
    ("auth", "token"),
    ("session", "key"),
    ("signing", "key"),
}
CSV_FIELD_LIMIT = 16 * 2**20  # characters in one CSV field (Python's default: 128 KiB)
# Whole-number fields: epoch and step numbers must be exact in a float64 (the sources'
# JSON/CSV numbers), seeds and batch sizes fit the int64 columns.
MAX_EXACT = 2**53
MAX_INT64 = 2**63 - 1


def is_secret_key(name: str) -> bool:
    """Whether a parameter or metric name looks like a credential (see `_SECRET_WORDS`)."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", text) if w]
    return bool(_SECRET_WORDS & set(words)) or any(
        p in _SECRET_PAIRS for p in itertools.pairwise(words)
    )


def drop_secrets(params: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """`params` without secret-looking keys (at any depth); and the dotted names dropped."""
    if not isinstance(params, Mapping):
        return params, []
    out, dropped = {}, []
    for k, v in params.items():
        name = f"{prefix}{k}"
        if is_secret_key(k):
            dropped.append(name)
            continue
        out[k], sub = drop_secrets(v, f"{name}.")
        dropped += sub
    return out, dropped


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, links resolved, is `root` or under it (`root` already resolved)."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(root)
    except OSError:
        return False


def read_text(path: Path, root: Path | None = None) -> str:
    """A source file's text; one-line ImportError_ naming the file when it is a link out of
    `root`, unreadable or not UTF-8."""
    if root is not None and not inside(path, root):
        raise ImportError_(
            f"{path}: a link to {os.path.realpath(path)}, outside the imported folder {root}; "
            "links out of it are not followed (copy the file in if it belongs to the study)"
        )
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportError_(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise ImportError_(f"{path}: cannot read it: {exc.strerror or exc}") from None


def read_json(path: Path, root: Path | None = None) -> Any:
    """A JSON file's value; one-line ImportError_ naming the file when it is not JSON (or
    see `read_text`)."""
    try:
        return json.loads(read_text(path, root))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ImportError_(f"{path}: not valid JSON ({str(exc)[:200]})") from None


def read_csv(path: Path, root: Path | None = None) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, column names) of a CSV file; one-line errors naming the file and the line."""
    text = read_text(path, root)
    old = csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ImportError_(f"{path}: line {reader.line_num}: not valid CSV: {exc}") from None
    finally:
        csv.field_size_limit(old)
    return rows, list(reader.fieldnames or [])


def whole(v: Any, what: str, where: str, lo: int = 0, hi: int = MAX_INT64) -> int:
    """`v` as an int in [lo, hi]; else a one-line ImportError_ naming `where`, `what`, `v`."""
    if isinstance(v, int) and not isinstance(v, bool):
        n: int | None = v
    else:
        f = number(v)
        n = int(f) if f is not None and math.isfinite(f) and f == int(f) else None
    if n is None or not lo <= n <= hi:
        raise ImportError_(
            f"{where}: {what} {_show(v)} is not allowed: a whole number in [{lo}, {hi}]"
        )
    return n


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def number(v: Any) -> float | None:
    """`v` as a float (NaN and inf kept: they are data), None when not a number."""
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f
