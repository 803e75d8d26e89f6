"""The base of every config model and the checks they share (pure pydantic).

Strict models (workers/config.py, workers/measure_config.py): unknown keys are errors, values
frozen, nothing coerced. Import paths of user code are checked here.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

# "module.sub:attr" or a path to a .py file ("./nets.py:build", "/abs/nets.py:build").
IMPORT_PATH = re.compile(r"(?:[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*|[^:\n]*\.py):[A-Za-z_][\w.]*")


def check_import_path(v: str | None, key: str) -> str | None:
    """`module:attr` or `file.py:attr`, else a ValueError saying what is allowed."""
    if v is None:
        return v
    if not isinstance(v, str) or not IMPORT_PATH.fullmatch(v):
        raise ValueError(
            "not an import path; expected 'package.module:function' or "
            "'./file.py:function' (a .py file relative to the grid file)"
        )
    return v


def jsonable(v: dict[str, Any], key: str) -> dict[str, Any]:
    """`v` when it is plain YAML data (JSON-serialisable), else a ValueError."""
    try:
        orjson.dumps(v, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise ValueError(
            f"values must be plain YAML data (numbers, strings, lists, mappings): {exc}"
        ) from None
    return v


class StrictConfig(BaseModel):
    """Base: unknown keys are errors, values are immutable once validated, and nothing is
    coerced: "32" is not an int, true is not 1, "yes" is not a bool (pydantic strict mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
