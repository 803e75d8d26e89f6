"""Grid spec validation and trial identity."""

from __future__ import annotations

import time

import pytest

from scheduler.spec import SpecError, load_spec, parse_spec
from workers.config import TrialConfig

BASE = {"experiment": "x"}

# (bad input, the YAML path the message must name, a fragment of what is allowed)
BAD_INPUTS = [
    ({"grid": {"btach_size": [32]}}, "grid.btach_size", "did you mean 'batch_size'"),
    ({"grid": {"batch_size": [-5]}}, "grid.batch_size[0]", "greater than 0"),
    ({"grid": {"batch_size": [0]}}, "grid.batch_size[0]", "greater than 0"),
    ({"grid": {"batch_size": []}}, "grid.batch_size", "at least one value"),
    ({"grid": {"batch_size": [32, 32]}}, "grid.batch_size", "unique"),
    ({"grid": {"batch_size": "32"}}, "grid.batch_size", "valid list"),
    ({"grid": {"lr": [0.0]}}, "grid.lr[0]", "greater than 0"),
    ({"grid": {"lr": [-0.1]}}, "grid.lr[0]", "greater than 0"),
    ({"grid": {"lr_scaling": ["cubic"]}}, "grid.lr_scaling[0]", "'linear'"),
    ({"dataset": "imagenet"}, "dataset.name", "'mnist1d'"),
    ({"model": {"name": "resnet"}}, "model.name", "'lenet'"),
    (
        {"model": {"hiden": [3]}},
        "model.hiden",
        "valid keys: batchnorm, channels, dropout, factory, hidden, kwargs, name",
    ),
    ({"optimizer": {"name": "rmsprop"}}, "optimizer.name", "'sgd' or 'adam'"),
    ({"optimizer": {"name": "adam", "nesterov": True}}, "grid[", "nesterov applies to sgd only"),
    ({"max_epochs": "ten"}, "max_epochs", "valid integer"),
    ({"max_epochs": 0}, "max_epochs", "greater than 0"),
    (
        {"early_stopping": {"patience": 5, "unit": "hours"}},
        "early_stopping.unit",
        "'epochs' or 'steps'",
    ),
    (
        {"resources": {"gpus_per_trial": -1}},
        "resources.gpus_per_trial",
        "greater than or equal to 0",
    ),
    ({"experiment": "has space"}, "experiment", "not a valid name"),
    ({"colour": "red"}, "colour", "valid keys:"),
]


@pytest.mark.parametrize(("patch", "path", "allowed"), BAD_INPUTS, ids=[b[1] for b in BAD_INPUTS])
def test_bad_input_names_field_value_and_allowed(patch, path, allowed):
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **patch})
    msg = str(info.value)
    assert path in msg, msg
    assert allowed in msg, msg


def test_missing_experiment():
    with pytest.raises(SpecError, match="experiment: required key is missing"):
        parse_spec({"grid": {}})


def test_errors_from_a_file_say_the_line_and_column(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(
        "experiment: x\n"
        "dataset: mnist1d\n"
        "model:\n"
        "  name: mlp\n"
        "  hiden: [32]\n"  # line 5: a typo in a key
        "max_epochs: 2\n"
        "grid:\n"
        "  batch_size: [32, -64]\n"  # line 8, column 20: a bad value in a list
        "  lr: [0.1]\n"
        "  seed: [0]\n"
        "optimizer: {name: sgd, momentum: 2.0}\n"  # line 11: a bad value in a flow mapping
    )
    with pytest.raises(SpecError) as info:
        load_spec(p)
    problems = info.value.problems
    assert any(
        x.startswith("model.hiden: unknown key 'hiden'") and x.endswith("(line 5, column 3)")
        for x in problems
    ), problems
    assert any(
        x.startswith("grid.batch_size[1]: -64") and x.endswith("(line 8, column 20)")
        for x in problems
    ), problems
    assert any(
        x.startswith("optimizer.momentum: 2.0") and x.endswith("(line 11, column 34)")
        for x in problems
    ), problems
    # Parsed data without its text (parse_spec): the same messages, without positions.
    with pytest.raises(SpecError) as info:
        parse_spec({"experiment": "x", "max_epochs": -1, "grid": {"lr": [0.1]}})
    assert not any("(line" in x for x in info.value.problems)


def test_malformed_yaml_and_missing_file(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("experiment: x\ngrid: {batch_size: [32, 64\n")
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+"):
        load_spec(p)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    p.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(p)


def test_expansion_is_the_cartesian_product():
    spec = parse_spec(
        {
            **BASE,
            "base_batch_size": 16,  # no batch size of the grid at base: no equivalent trials
            "grid": {
                "batch_size": [32, 64, 128],
                "lr": [0.01, 0.1],
                "lr_scaling": ["none", "linear"],
                "seed": [0, 1],
            },
        }
    )
    trials = spec.trials()
    assert len(trials) == spec.n_trials == 24
    assert len({t.trial_id for t in trials}) == 24
    combos = {(t.batch_size, t.lr, t.lr_scaling, t.seed) for t in trials}
    assert (128, 0.1, "linear", 1) in combos
    t = next(t for t in trials if t.batch_size == 128 and t.lr_scaling == "linear" and t.lr == 0.01)
    assert t.scaled_lr == pytest.approx(0.08)


def test_trial_id_is_stable_and_independent_of_grid_position():
    a = parse_spec({**BASE, "grid": {"batch_size": [32, 64], "seed": [0]}}).trials()
    b = parse_spec({**BASE, "grid": {"batch_size": [128, 64, 32], "seed": [0, 1]}}).trials()
    ids_b = {(t.batch_size, t.seed): t.trial_id for t in b}
    for t in a:
        assert ids_b[(t.batch_size, t.seed)] == t.trial_id
    # The bulk-computed hash equals a fresh validation of the same config.
    for t in b:
        assert TrialConfig.model_validate(t.model_dump()).trial_id == t.trial_id
    # Experiment name and resources are not part of a trial's identity.
    c = parse_spec(
        {"experiment": "other", "grid": {"batch_size": [32]}, "resources": {"cpus_per_trial": 2}}
    )
    assert c.trials()[0].trial_id == ids_b[(32, 0)]
    # Any result-changing setting is.
    d = parse_spec({**BASE, "max_epochs": 21, "grid": {"batch_size": [32]}})
    assert d.trials()[0].trial_id != ids_b[(32, 0)]


def test_nested_axes_land_in_their_sections():
    spec = parse_spec(
        {**BASE, "grid": {"momentum": [0.0, 0.9], "batchnorm": [False, True], "n_train": [500]}}
    )
    trials = spec.trials()
    assert {(t.optimizer.momentum, t.model.batchnorm, t.dataset.n_train) for t in trials} == {
        (0.0, False, 500),
        (0.0, True, 500),
        (0.9, False, 500),
        (0.9, True, 500),
    }
    assert len({t.trial_id for t in trials}) == 4


def test_hundred_thousand_trials_plan_in_seconds():
    spec = parse_spec(
        {
            **BASE,
            "grid": {
                "batch_size": list(range(1, 101)),
                "lr": [0.001 * i for i in range(1, 101)],
                "seed": list(range(10)),
            },
        }
    )
    t0 = time.perf_counter()
    trials = spec.trials()
    assert len(trials) == 100_000
    # Generous bound for a shared 2-core CI machine; typically a few seconds.
    assert time.perf_counter() - t0 < 60


def test_example_grids_are_valid():
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    files = sorted(examples.glob("*.yaml"))
    assert files
    for f in files:
        assert load_spec(f).n_trials >= 1


def test_equivalent_settings_run_once():
    spec = parse_spec(
        {
            **BASE,
            "base_batch_size": 32,
            "grid": {
                "batch_size": [32, 64],
                "lr_scaling": ["none", "linear", "sqrt"],
                "warmup_epochs": [0, 2],
            },
        }
    )
    trials = spec.trials()
    # bs 32: every rule gives lr (and warmup from lr to lr is none): 1 trial; bs 64: none
    # (warmup no-op) + linear x 2 warmups + sqrt x 2 warmups = 5.
    assert spec.n_trials == 12 and len(trials) == 6
    at_base = [t for t in trials if t.batch_size == 32]
    assert [(t.lr_scaling, t.warmup_epochs) for t in at_base] == [("none", 0.0)]
    assert sorted((t.lr_scaling, t.warmup_epochs) for t in trials if t.batch_size == 64) == [
        ("linear", 0.0),
        ("linear", 2.0),
        ("none", 0.0),
        ("sqrt", 0.0),
        ("sqrt", 2.0),
    ]
    assert len({t.trial_id for t in trials}) == 6


STRICT = [
    ({"grid": {"batch_size": ["32"]}}, "grid.batch_size[0]", "valid integer"),
    ({"grid": {"batch_size": [True]}}, "grid.batch_size[0]", "valid integer"),
    ({"grid": {"batchnorm": ["yes"]}}, "grid.batchnorm[0]", "valid boolean"),
    ({"grid": {"lr": ["0.1"]}}, "grid.lr[0]", "valid number"),
    ({"max_epochs": 3.0}, "max_epochs", "valid integer"),
    ({"model": {"name": "mlp", "batchnorm": 1}}, "model.batchnorm", "valid boolean"),
    ({"experiment": "name\n"}, "experiment", "not a valid name"),
]


@pytest.mark.parametrize(("patch", "path", "allowed"), STRICT, ids=[s[1] for s in STRICT])
def test_no_coercion_anywhere(patch, path, allowed):
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **patch})
    msg = str(info.value)
    assert path in msg and allowed in msg, msg


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    p = tmp_path / "grid.yaml"
    p.write_text("experiment: x\ngrid:\n  lr: [0.1]\n  seed: [0]\n  lr: [0.2]\n")
    with pytest.raises(SpecError, match=r"duplicate key 'lr': first at line 3, again at line 5"):
        load_spec(p)


def test_grid_size_is_capped_before_anything_is_expanded():
    big = {**BASE, "grid": {"batch_size": list(range(1, 1001)), "seed": list(range(1000))}}
    with pytest.raises(SpecError, match=r"1,000,000 trials .* exceed max_trials 200,000"):
        parse_spec(big)
    assert parse_spec({**big, "max_trials": 1_000_000}).n_trials == 1_000_000


def test_data_set_sizes_are_checked_before_a_run():
    from scheduler.preflight import check_user_code

    spec = parse_spec(
        {
            **BASE,
            "dataset": {"name": "mnist1d", "n_train": 500},
            "grid": {"batch_size": [64, 512, 1024]},
        }
    )
    assert check_user_code(spec) == [
        "batch_size: 512 exceeds the 500 training examples of data set 'mnist1d'; allowed: 1 to 500",
        "batch_size: 1024 exceeds the 500 training examples of data set 'mnist1d'; allowed: 1 to 500",
    ]
    spec = parse_spec({**BASE, "dataset": {"name": "digits", "n_train": 5000}})
    (msg,) = check_user_code(spec)
    assert msg == "dataset.n_train: 5000 exceeds the 1438 training examples of digits"


def test_scaled_lr_out_of_range_is_refused_at_load_time(tmp_path, capsys):
    """Trials after the grid's first are derived with model_copy (TrialConfig's validator
    skipped): an lr whose scaled value is inf under the rule used to parse and only fail in
    the worker. Now load_spec (so `batchlab run --dry-run`) refuses it, naming lr, the base
    value, the rule, the batch sizes and the scaled value, with its line and column."""
    from batchlab.cli import main

    p = tmp_path / "g.yaml"
    p.write_text(
        "experiment: x\n"
        "grid:\n"
        "  batch_size: [16, 64]\n"
        "  lr: [0.1, 1.0e+308]\n"  # line 4, column 13: the second lr
        "  lr_scaling: [none, linear]\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(p)
    # Only linear at batch 64 overflows (x2); at 16 it halves, with none it stays.
    assert info.value.problems == [
        "grid.lr: 1e+308 scaled by lr_scaling 'linear' (batch_size 64 / base_batch_size 32) "
        "is inf; the scaled lr must be finite and > 0 (line 4, column 13)"
    ]
    assert main(["run", str(p), "--dry-run", "--storage", str(tmp_path / "runs")]) == 2
    assert "1e+308 scaled by lr_scaling 'linear'" in capsys.readouterr().err
    # Underflow to 0 too, and the same values under a rule that keeps them finite pass.
    with pytest.raises(SpecError, match=r"5e-324 scaled by lr_scaling 'sqrt' .* is 0\.0"):
        parse_spec({**BASE, "grid": {"lr": [5e-324], "lr_scaling": ["sqrt"], "batch_size": [8]}})
    axes = {"lr": [1e308], "lr_scaling": ["none", "sqrt"], "batch_size": [16, 32]}
    ok = parse_spec({**BASE, "grid": axes})
    assert {t.scaled_lr for t in ok.trials()} == {1e308, 1e308 * 0.5**0.5}
