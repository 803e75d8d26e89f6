"""Problem lines of an invalid grid spec: each names the field's YAML path, the value, what
is allowed and, with the file's marks, where the field is (line, column).

`SpecError` is re-exported by scheduler/spec.py, where the rest of the code imports it.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from scheduler.grid_yaml import Marks


class SpecError(ValueError):
    """An invalid grid spec; `str()` lists every problem, one per line."""

    def __init__(self, problems: list[str], source: str = "grid"):
        self.problems = problems
        head = (
            f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the grid spec"
        )
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))


def model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model whose field set applies at `loc` (`loc[:-1]` walked from `root`),
    or None where `loc` is not inside nested models."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                nxt = cand
        model = nxt
    return model


SHOW = reprlib.Repr()
SHOW.maxstring = SHOW.maxother = SHOW.maxlong = 80


def position(marks: Marks | None, loc: tuple, key: bool = False) -> str:
    """' (line L, column C)' of `loc` in the YAML text (its key's position with `key`; the
    nearest enclosing node when `loc` itself is absent, e.g. a missing key)."""
    if not marks:
        return ""
    if key and (*loc, "<key>") in marks:
        line, col = marks[(*loc, "<key>")]
        return f" (line {line}, column {col})"
    for n in range(len(loc), -1, -1):
        if n and loc[:n] in marks:
            line, col = marks[loc[:n]]
            return f" (line {line}, column {col})"
    return ""


def _dotted(prefix: str, loc: tuple) -> str:
    path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    return path.lstrip(".") or "(top level)"


def _shown(value: Any) -> str:
    # reprlib: bounded depth and length (a value nested thousands deep, or a YAML alias
    # bomb, must not blow the recursion limit or the memory while printing it).
    if isinstance(value, dict):
        return "{}" if not value else "{...}"
    shown = SHOW.repr(value)
    return shown[:77] + "..." if len(shown) > 80 else shown


def _null_fields(root: type[BaseModel], loc: tuple, value: Any) -> list[str]:
    """The keys of a section given as null, when a rule of the whole section failed
    (`stop: {max_steps: null}`: "give at least one of ..."): the lines then name them."""
    if not isinstance(value, dict):
        return []
    model = model_at(root, (*loc, "?"))
    if model is None:
        return []
    return [k for k, v in value.items() if v is None and k in model.model_fields]


def problems_of(
    exc: ValidationError, root: type[BaseModel], prefix: str = "", marks: Marks | None = None
) -> list[str]:
    """One line per error of `exc` (a validation of `root`), naming the field's path."""
    out = []
    for err in exc.errors():
        loc = tuple(
            p
            for p in err["loc"]
            if not (isinstance(p, str) and ("[" in p or p in ("function-after",)))
        )
        if err["type"] == "extra_forbidden" and err["loc"] and loc[-1:] != err["loc"][-1:]:
            loc = (*loc, err["loc"][-1])  # the user's key itself, even one that contains "["
        path = _dotted(prefix, loc)
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            model = model_at(root, loc)
            valid = sorted(model.model_fields) if model else []
            key = loc[-1] if loc else "?"
            hint = difflib.get_close_matches(str(key), valid, n=1)
            msg = f"{path}: unknown key {key!r}"
            if hint:
                msg += f" (did you mean {hint[0]!r}?)"
            if valid:
                msg += f"; valid keys: {', '.join(valid)}"
            out.append(msg + position(marks, loc, key=True))
            continue
        if err["type"] == "missing":
            out.append(f"{path}: required key is missing" + position(marks, loc[:-1]))
            continue
        text = err["msg"].removeprefix("Value error, ")
        nulls = _null_fields(root, loc, value) if err["type"] == "value_error" else []
        for k in nulls:  # a section-wide rule broken by null settings: name each of them
            sub = (*loc, k)
            out.append(
                f"{_dotted(prefix, sub)}: None is not allowed: {text}" + position(marks, sub)
            )
        if not nulls:
            out.append(f"{path}: {_shown(value)} is not allowed: {text}" + position(marks, loc))
    return out


def huge_ints(data: Any, limit: int = 20) -> list[str]:
    """Problems for integers outside the 64-bit range anywhere in `data` (the trial hash,
    Parquet columns and torch all need int64). Iterative and visiting each list or mapping
    once, so input nested thousands deep or a YAML alias bomb costs nothing."""
    out: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", data)]
    while stack and len(out) < limit:
        path, v = stack.pop()
        if isinstance(v, Mapping | list | tuple):
            if id(v) in seen:
                continue
            seen.add(id(v))
            items = v.items() if isinstance(v, Mapping) else enumerate(v)
            for k, x in items:
                if not isinstance(v, Mapping):
                    sub = f"{path}[{k}]"
                else:
                    sub = f"{path}.{k}" if path else str(k)
                stack.append((sub, x))
        elif isinstance(v, int) and not -(2**63) <= v < 2**63:
            out.append(f"{path}: {SHOW.repr(v)} is not allowed: integers must fit in 64 bits")
    return sorted(out)


MAX_DEPTH = 64  # lists and mappings inside one another: free-form values (kwargs, params)


def too_deep(data: Any, limit: int = MAX_DEPTH) -> list[str]:
    """Problems for values nested more than `limit` lists / mappings deep (a free-form
    `loss_kwargs` or `params` value 300 levels deep would break serialization and the trial
    hash). Iterative, each list or mapping visited once."""
    seen: set[int] = set()
    stack: list[tuple[tuple, Any]] = [((), data)]
    while stack:
        path, v = stack.pop()
        if not isinstance(v, Mapping | list | tuple) or id(v) in seen:
            continue
        seen.add(id(v))
        if len(path) > limit:
            shown = _dotted("", path[:3]) + ("..." if len(path) > 3 else "")
            return [
                f"{shown}: a value nested more than {limit} levels deep is not allowed: at most "
                f"{limit} levels of lists and mappings inside one another"
            ]
        items = v.items() if isinstance(v, Mapping) else enumerate(v)
        stack.extend(((*path, k), x) for k, x in items)
    return []
