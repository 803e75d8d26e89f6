"""User code: import paths from grid.yaml resolved to functions, and their provenance.

A grid names user code by an import path, in one of two forms:

- `"package.module:function"`: imported with importlib (the package must be importable in
  the worker: installed, or under the grid file's folder, which is put on `sys.path`);
- `"./file.py:function"` (or an absolute path): the file is loaded as a module; a relative
  path is relative to the grid file's folder (the *code dir*).

The code dir is not part of a trial's identity (the import path as written is): a worker
learns it from the scheduler with `use_code_dir` before it resolves anything.

Provenance (`code_info`): a sha256 of the source that runs (the file, or every .py file of
the top-level package when it is a local package) and the installed distribution version
when the code comes from an installed package, so a changed model is visibly a different
code version in the warehouse.

Pure Python; no torch, no Ray (the driver imports this for `--dry-run` checks too).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_code_dir: str | None = None


class UserCodeError(ValueError):
    """An import path that does not resolve, or user code that broke a contract. The
    message names the grid key, the value and what was expected."""


def use_code_dir(code_dir: str | None) -> None:
    """Set the folder relative file paths are resolved against and put it on sys.path."""
    global _code_dir
    if not code_dir:
        return
    code_dir = str(Path(code_dir).resolve())
    with _lock:
        _code_dir = code_dir
        if code_dir not in sys.path:
            sys.path.insert(0, code_dir)


def code_dir() -> str | None:
    return _code_dir


def _split(path: str, key: str) -> tuple[str, str]:
    if not isinstance(path, str) or ":" not in path:
        raise UserCodeError(
            f"{key}: {path!r} is not an import path; expected 'package.module:function' or "
            "'./file.py:function'"
        )
    mod, _, attr = path.rpartition(":")
    return mod, attr


def _file_of(mod: str) -> Path | None:
    """The .py file named by the module part of a path, or None for a dotted module."""
    if not mod.endswith(".py"):
        return None
    p = Path(mod).expanduser()
    if not p.is_absolute():
        p = Path(_code_dir or os.getcwd()) / p
    return p.resolve()


def _load_file(path: Path, key: str, value: str):
    if not path.is_file():
        raise UserCodeError(
            f"{key}: {value!r}: file {str(path)!r} does not exist (relative paths are relative "
            f"to the grid file's folder {_code_dir or os.getcwd()!r})"
        )
    name = "batchlab_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    with _lock:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UserCodeError(f"{key}: {value!r}: {str(path)!r} cannot be loaded as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module


def resolve(path: str, key: str) -> Callable[..., Any]:
    """The callable an import path names. Errors raised while importing the user's module
    propagate with the user's traceback, wrapped in a UserCodeError that names `key`."""
    mod, attr = _split(path, key)
    file = _file_of(mod)
    try:
        module = _load_file(file, key, path) if file else importlib.import_module(mod)
    except UserCodeError:
        raise
    except ModuleNotFoundError as exc:
        raise UserCodeError(
            f"{key}: {path!r}: module {mod!r} cannot be imported ({exc}); it must be installed "
            "or live under the grid file's folder, or use './file.py:function'"
        ) from exc
    except Exception as exc:
        raise UserCodeError(
            f"{key}: {path!r}: importing {mod!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(
                n
                for n, v in vars(module).items()
                if not n.startswith("_")
                and callable(v)
                and getattr(v, "__module__", None) == module.__name__
            )[:20]
            raise UserCodeError(
                f"{key}: {path!r}: {mod!r} has no attribute {attr!r}; it defines: "
                + (", ".join(names) or "nothing public")
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserCodeError(f"{key}: {path!r} is a {type(obj).__name__}, not a function")
    return obj


def call_with(fn: Callable[..., Any], kwargs: dict[str, Any], offered: dict[str, Any]) -> Any:
    """Call `fn(**kwargs)`, adding each of `offered` (e.g. input_shape, num_classes) that
    `fn` accepts by name (or all of them when it takes **kwargs) and kwargs do not set."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn(**kwargs)
    params = sig.parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in offered.items() if k not in kwargs and (var_kw or k in params)}
    return fn(**kwargs, **extra)


# ----------------------------------------------------------------------------- provenance


def _hash_files(files: Iterable[Path], h: hashlib._Hash) -> int:
    n = 0
    for f in sorted(files):
        try:
            data = f.read_bytes()
        except OSError:
            continue
        h.update(str(f.name).encode() + b"\0" + data + b"\0")
        n += 1
    return n


def _distribution_of(top: str) -> str | None:
    try:
        dists = importlib.metadata.packages_distributions().get(top) or []
    except Exception:
        return None
    for d in dists:
        try:
            return f"{d}=={importlib.metadata.version(d)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def source_info(path: str, key: str) -> dict[str, Any]:
    """What runs behind one import path: {"path", "source", "sha256", "version"}.

    A file: the sha256 of the file. A dotted module: its top-level package's files when it
    is a local package (at most 2,000 .py files), else its own file, plus the installed
    distribution's version. Resolves (imports) the path."""
    resolve(path, key)
    mod, _ = _split(path, key)
    h = hashlib.sha256()
    file = _file_of(mod)
    version = None
    if file is not None:
        _hash_files([file], h)
        source = str(file)
    else:
        top = mod.split(".")[0]
        module = sys.modules.get(top) or importlib.import_module(top)
        version = _distribution_of(top)
        pkg_dirs = list(getattr(module, "__path__", []) or [])
        files: list[Path] = []
        if pkg_dirs and version is None:
            for d in pkg_dirs:
                files += list(Path(d).rglob("*.py"))[:2000]
        else:
            own = sys.modules.get(mod) or importlib.import_module(mod)
            if getattr(own, "__file__", None):
                files.append(Path(own.__file__))
        _hash_files(files, h)
        source = str(pkg_dirs[0]) if pkg_dirs else str(files[0] if files else top)
    return {"path": path, "source": source, "sha256": h.hexdigest(), "version": version}


def code_info(paths: dict[str, str]) -> dict[str, Any]:
    """Provenance of a trial's user code (`TrialConfig.user_paths`): {"hash": 16 hex digits
    over every source, "version": "key=path sha256:xxxx [dist==v]; ..."}; empty strings when
    the trial runs no user code. Built-in loss names are not user code."""
    if not paths:
        return {"hash": "", "version": ""}
    infos = {k: source_info(v, k) for k, v in sorted(paths.items())}
    h = hashlib.sha256()
    parts = []
    for k, info in infos.items():
        h.update(f"{k}={info['path']}:{info['sha256']}".encode())
        parts.append(
            f"{k}={info['path']} sha256:{info['sha256'][:12]}"
            + (f" {info['version']}" if info["version"] else "")
        )
    return {"hash": h.hexdigest()[:16], "version": "; ".join(parts)}
