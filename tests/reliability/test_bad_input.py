"""Bad grid.yaml input, systematically: whatever YAML can hold, at whatever field, gives a
`SpecError` naming the field's path, never another traceback; a 100,000-trial grid is
planned in seconds by `--dry-run`, without running or writing anything.

Values are the ones `yaml.safe_load` can produce (None, bools, ints of any size, floats with
NaN/inf, unicode strings, bytes from !!binary, dates, lists, mappings with any keys),
nested, huge and deep. The fields come from the pydantic models themselves, so a field
added later is fuzzed too.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from batchlab.cli import main as cli_main
from scheduler.spec import GridSpec, SpecError, load_spec, parse_spec
from tests.reliability.helpers import REPO, pids_mentioning

BASE: dict[str, Any] = {
    "experiment": "fuzz",
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [8]},
    "optimizer": {"name": "sgd"},
    "early_stopping": {},
    "plateau_decay": {},
    "measure": {"sharpness": {}, "hessian": {}, "noise_scale": {}},
    "grid": {"batch_size": [32], "seed": [0]},
    "resources": {},
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def field_paths(model: type[BaseModel] = GridSpec, prefix: tuple[str, ...] = ()) -> list[tuple]:
    """Every field path of the spec, nested models included (`("measure", "sharpness",
    "eps")`, ...)."""
    out = []
    for name, f in model.model_fields.items():
        path = (*prefix, name)
        out.append(path)
        if (sub := _submodel(f.annotation)) is not None:
            out.extend(field_paths(sub, path))
    return out


FIELDS = field_paths()
MAPPINGS = [()] + [p for p in FIELDS if p in {q[:-1] for q in FIELDS}]


def model_at(path: tuple[str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = GridSpec
    for part in path:
        model = _submodel(model.model_fields[part].annotation)
    return model


def with_value(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    target = d
    for part in path[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[path[-1]] = value
    return d


def names_the_path(line: str, path: str) -> bool:
    """Whether a problem line ("<field path>: ...") is about `path` or a field inside it
    (a trial-level problem reads "grid[batch_size=32, ...].<path>: ...")."""
    head = line.split(": ", 1)[0]
    head = head.split("].", 1)[1] if head.startswith("grid[") and "]." in head else head
    return head == path or head.startswith((path + ".", path + "["))


def nested_list(depth: int) -> list:
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


def nested_dict(depth: int) -> dict:
    v: dict = {}
    for _ in range(depth):
        v = {"a": v}
    return v


# What yaml.safe_load can return, as values and as mapping keys.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.binary(max_size=16)
    | st.dates()
    | st.datetimes(timezones=st.none() | st.just(dt.timezone.utc))
)
keys = st.text(max_size=12) | st.integers() | st.none() | st.booleans()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
) | st.one_of(
    st.integers(1, 3000).map(nested_list),
    st.integers(1, 3000).map(nested_dict),
    st.integers(1, 20_000).map(lambda n: list(range(-n, 0))),  # huge and all invalid
    st.integers(1, 20_000).map(lambda n: ["x" * 100] * n),
)


def parse_or_spec_error(data: Any) -> GridSpec | SpecError:
    """parse_spec's outcome; anything but a GridSpec or a SpecError fails the test."""
    try:
        spec = parse_spec(data)
    except SpecError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return exc
    assert spec.n_trials >= 1
    if spec.n_trials <= 500:  # planning (trial ids: hashes of the resolved configs) works too
        assert all(len(t.trial_id) == 16 for t in spec.trials())
    return spec


def test_base_grid_is_valid():
    assert isinstance(parse_or_spec_error(BASE), GridSpec)
    assert len(FIELDS) > 50 and len(MAPPINGS) >= 12  # every nested section is fuzzed


@FUZZ
@given(path=st.sampled_from(FIELDS), value=values)
# Found by earlier runs: a section rule broken by a null key ("give at least one of ...") named
# only the section; a free-form value nested 256 deep broke the trial hash (not a SpecError).
@example(path=("stop", "max_steps"), value=None)
@example(path=("until", "train_loss_below"), value=None)
@example(path=("loss_kwargs",), value=nested_dict(256))
@example(path=("params",), value=nested_list(300))
def test_any_value_at_any_field_is_valid_or_a_spec_error_naming_the_field(path, value):
    out = parse_or_spec_error(with_value(path, value))
    if isinstance(out, SpecError):
        dotted = ".".join(path)
        assert any(names_the_path(p, dotted) for p in out.problems), (dotted, out.problems[:3])


@FUZZ
@given(where=st.sampled_from(MAPPINGS), key=keys, value=scalars)
def test_unknown_key_at_every_level_is_named_with_the_valid_keys(where, key, value):
    valid = set(model_at(where).model_fields)
    if key in valid:
        return
    data = copy.deepcopy(BASE) if not where else with_value(where, {})
    target = data
    for part in where:
        target = target[part]
    target[key] = value
    out = parse_or_spec_error(data)
    assert isinstance(out, SpecError), (where, key)
    dotted = ".".join(where)
    line = out.problems[0]
    if isinstance(key, str):
        assert f"unknown key {key!r}" in line
        assert "valid keys: " + ", ".join(sorted(valid)) in line
        # The line starts with the key's own path ("model.widht: ..."; "widht: ..." on top).
        own = ".".join((*where, key)).lstrip(".") or "(top level)"
        assert line.startswith(f"{own}: "), line
    else:  # YAML keys that are not strings (1, null, true)
        assert "Keys should be strings" in line and (not dotted or line.startswith(dotted))


@FUZZ
@given(top=values)
def test_any_document_is_a_grid_or_a_spec_error(top):
    parse_or_spec_error(top)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_any_file_content_is_a_grid_or_a_spec_error(text):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "grid.yaml"
        p.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        try:
            load_spec(p)
        except SpecError as exc:
            assert str(exc).startswith(str(p))


MALFORMED = {
    "unclosed flow": ("experiment: x\ngrid: {seed: [0, 1}\n", "malformed YAML at line 2"),
    "tab indentation": ("experiment: x\ngrid:\n\tseed: [0]\n", "malformed YAML at line 3"),
    "bad indentation": ("experiment: x\n  grid: 1\n", "malformed YAML at line 2"),
    "unknown anchor": ("experiment: *nope\n", "malformed YAML"),
    "python tag": (
        "experiment: !!python/object/apply:os.system ['touch PWNED']\n",
        "could not determine a constructor",
    ),
    "duplicate document": ("experiment: x\n---\nexperiment: y\n", "malformed YAML"),
    "empty file": ("", "(top level): expected a mapping of keys, got NoneType"),
    "a list": ("- 1\n- 2\n", "(top level): expected a mapping of keys, got list"),
    "deep flow": (
        "experiment: x\nmodel: {hidden: " + "[" * 5000 + "]" * 5000 + "}\n",
        "nesting too deep",
    ),
    "deep block": (
        "experiment: x\nmodel:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(3000)),
        "nesting too deep",
    ),
    "not utf-8": (b"experiment: \xff\xfe\n", "not a UTF-8 text file"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_yaml_is_a_spec_error_with_the_place(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, expected = MALFORMED[case]
    p = tmp_path / "grid.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert expected in str(info.value)
    assert not (tmp_path / "PWNED").exists()  # YAML tags never construct Python objects


def test_alias_bomb_and_deep_values_are_refused_quickly(tmp_path):
    # 9^9 = 387 million strings if expanded; printing the bad value must not expand it.
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    bomb = "\n".join(lines) + "\nexperiment: x\ngrid: {seed: [*a8]}\n"
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb)
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert time.perf_counter() - t0 < 5
    assert "a0: unknown key" in str(info.value) and "grid.seed[0]" in str(info.value)
    out = parse_or_spec_error(with_value(("model", "hidden"), nested_list(100_000)))
    assert isinstance(out, SpecError) and names_the_path(out.problems[0], "model.hidden")


def test_seed_beyond_32_bits_is_refused_at_parse_time():
    # Larger seeds used to pass the spec and fail every trial at run time (torch's generator
    # seeding overflows at seed * 1_000_003).
    out = parse_or_spec_error(with_value(("grid", "seed"), [0, 2**45]))
    assert isinstance(out, SpecError) and out.problems[0].startswith("grid.seed[1]: ")


def test_integers_beyond_64_bits_are_refused_at_parse_time():
    # They used to pass the spec and make planning raise a TypeError (the trial hash).
    out = parse_or_spec_error(with_value(("grid", "batch_size"), [32, 2**70]))
    assert isinstance(out, SpecError)
    assert out.problems == [
        "grid.batch_size[1]: 1180591620717411303424 is not allowed: integers must fit in 64 bits"
    ]
    out = parse_or_spec_error(with_value(("max_epochs",), -(10**400)))
    assert isinstance(out, SpecError) and out.problems[0].startswith("max_epochs: -1000")
    assert len(out.problems[0]) < 200


def test_cli_reports_a_bad_grid_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "grid.yaml"
    bad.write_text("experiment: x\nmodel: {name: resnet, widht: 3}\ngrid: {lr: [-1]}\n")
    assert cli_main(["run", str(bad), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for field in ("model.name: 'resnet'", "model.widht: unknown key", "grid.lr[0]: -1"):
        assert field in err
    assert cli_main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_dry_run_of_100k_trials_plans_in_seconds_and_runs_nothing(tmp_path):
    grid = {
        "experiment": "big",
        "dataset": "digits",
        "model": {"name": "mlp", "hidden": [8]},
        "grid": {
            "batch_size": list(range(1, 101)),
            "lr": [round(0.01 * i, 2) for i in range(1, 11)],
            "seed": list(range(100)),
        },
    }
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(grid))
    root = tmp_path / "runs"
    ray_tmp = tempfile.mkdtemp(prefix="blr-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "batchlab.cli", "run", str(p), "--storage", str(root), "--dry-run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    wall_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "100000 trials in the grid, 0 already in storage (skipped), 100000 to run" in proc.stdout
    assert "... and 99980 more" in proc.stdout
    assert wall_s < 60, f"planning 100,000 trials took {wall_s:.1f} s"
    # Nothing ran and nothing was written: no storage root, no Ray session.
    assert not root.exists()
    assert os.listdir(ray_tmp) == [] and pids_mentioning(ray_tmp) == []
    os.rmdir(ray_tmp)


def test_numbers_as_docs_grid_md_writes_them_are_floats(tmp_path):
    """Every float form docs/grid.md shows (`1e-3`, `1E-3`, `5e-4`, `.5`, `1.5e+3`, `-2e-4`,
    the defaults' `1e-8`, `1e4` ...) is read as a float by load_spec, not the string PyYAML
    alone makes of `1e-3`; ints stay ints and a quoted number stays a string."""
    import re

    from scheduler.grid_yaml import FLOAT_12, read_yaml

    doc = (REPO / "docs" / "grid.md").read_text()
    forms = {
        f
        for f in re.findall(
            r"(?<![\w.+-])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])", doc
        )
        if FLOAT_12.match(f) and re.search(r"[eE.]", f)
    }
    # The paragraph on numbers, and the exponent forms the tables use, are all there.
    assert {"1e-3", "1E-3", "5e-4", ".5", "1.5e+3", "-2e-4", "1e-8", "1e4"} <= forms, forms
    for form in sorted(forms):
        p = tmp_path / "grid.yaml"
        p.write_text(f"experiment: x\nparams: {{v: {form}}}\ngrid:\n  lr: [{form}]\n")
        if float(form) > 0:
            spec = load_spec(p)
            assert spec.grid.lr == [float(form)] and type(spec.grid.lr[0]) is float, form
            assert spec.params == {"v": float(form)}, form
        else:  # a number, refused as a number: not "Input should be a valid number"
            with pytest.raises(SpecError, match=rf"grid\.lr\[0\]: {float(form)!r} is not allowed"):
                load_spec(p)
    assert read_yaml("a: [32, 1_000, '1e-3', 1e3, yes]") == {"a": [32, 1000, "1e-3", 1000.0, True]}
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # PyYAML's own loader is unchanged
