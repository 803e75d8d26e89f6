"""`batchlab import` on hostile or broken sources (issue 24, round 3): links out of the
imported folder, secrets in the params, bad values, undecodable files, event files with no
scalars. Every refusal is one line naming the file (and the trial, field and value), exit 2,
and nothing written; nothing outside the folder and no secret reaches the warehouse."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from batchlab.cli import main
from warehouse.db import connect
from warehouse.importers import is_secret_key

SENTINEL = "sk-SENTINEL-0123456789"


def _tune_trial(folder: Path, name: str, results: list[dict], params: dict | None) -> Path:
    d = folder / name
    d.mkdir(parents=True)
    if params is not None:
        (d / "params.json").write_text(json.dumps(params))
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
    return d


def _epochs(n: int = 3, **extra) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "trial_id": "t1", **extra}
        for e in range(1, n + 1)
    ]


def _files_hold(root: Path, text: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def _one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)
    return err


def _nothing_written(root: Path) -> None:
    assert not root.exists() or not list((root / "tables").rglob("*.parquet"))


def test_ray_tune_link_out_of_the_folder_is_not_followed_and_secrets_are_dropped(
    tmp_path, capsys
) -> None:
    outside = tmp_path / "elsewhere" / "params.json"
    outside.parent.mkdir()
    outside.write_text(json.dumps({"batch_size": 32, "lr": 0.1, "api_key": SENTINEL}))
    study = tmp_path / "sweep"
    # params.json is a link out of the study: not read; the results' config is used instead,
    # and its secret-looking keys are dropped (named in a note, values never shown).
    config = {
        "batch_size": 64,
        "lr": 0.05,
        "wandb_api_key": SENTINEL,
        "HF_TOKEN": SENTINEL,
        "db": {"password": SENTINEL, "host": "h"},
        "max_tokens": 512,
    }
    d = _tune_trial(study, "trial_a", _epochs(config=config, auth_token=7.0), None)
    os.symlink(outside, d / "params.json")
    root = tmp_path / "runs"
    assert main(["import", "ray-tune", str(study), "--storage", str(root)]) == 0
    out = capsys.readouterr().out
    assert "params.json not read: a link out of the imported folder" in out
    assert "dropped secret-looking keys HF_TOKEN, auth_token, db.password, wandb_api_key" in out
    assert SENTINEL not in out
    assert _files_hold(root, SENTINEL) == [] and _files_hold(root, "api_key") == []
    ((cfg,),) = connect(str(root)).sql("SELECT config_json FROM trials").fetchall()
    params = json.loads(cfg)["params"]
    assert params == {"batch_size": 64, "lr": 0.05, "db": {"host": "h"}, "max_tokens": 512}
    # A result file that is a link out of the folder is an error (no rows written).
    e = _tune_trial(tmp_path / "s2", "trial_b", [], {"batch_size": 8, "lr": 0.1})
    (e / "result.json").unlink()
    secret_results = tmp_path / "elsewhere" / "result.json"
    secret_results.write_text(json.dumps({"epoch": 1, "val_loss": 1.0}) + "\n")
    os.symlink(secret_results, e / "result.json")
    root2 = tmp_path / "runs2"
    assert main(["import", "ray-tune", str(tmp_path / "s2"), "--storage", str(root2)]) == 2
    _one_line_error(capsys, str(e / "result.json"), "outside the imported folder")
    _nothing_written(root2)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("apiKey", True),
        ("OPENAI_API_KEY", True),
        ("hf_token", True),
        ("password", True),
        ("db_passwd", True),
        ("client_secret", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("credentials", True),
        ("authToken", True),
        ("private_key", True),
        ("batch_size", False),
        ("max_tokens", False),
        ("tokenizer", False),
        ("key", False),
        ("lr", False),
        ("secrets", True),
    ],
)
def test_secret_looking_names(name, secret) -> None:
    assert is_secret_key(name) is secret


BAD_RAY_TUNE = [
    # (what, params, results, expected parts of the one-line error)
    (
        "seed Infinity",
        {"batch_size": 8, "lr": 0.1, "seed": float("inf")},
        _epochs(),
        ["seed inf is not allowed", "whole number"],
    ),
    (
        "epoch 1e30",
        {"batch_size": 8, "lr": 0.1},
        [{"epoch": 1e30, "val_loss": 1.0}],
        ["epoch 1: epoch 1e+30 is not allowed"],
    ),
    (
        "fractional epoch",
        {"batch_size": 8, "lr": 0.1},
        [{"epoch": 1.5, "val_loss": 1.0}],
        ["epoch 1.5 is not allowed"],
    ),
    (
        "step 2**70",
        {"batch_size": 8, "lr": 0.1},
        [{"epoch": 1, "step": 2**70, "val_loss": 1}],
        ["step 1180591620717411303424 is not allowed"],
    ),
    (
        "batch size 1e30",
        {"batch_size": 1e30, "lr": 0.1},
        _epochs(),
        ["batch_size 1e+30 is not allowed"],
    ),
    ("lr NaN", {"batch_size": 8, "lr": "NaN"}, _epochs(), ["lr 'NaN' is not a positive number"]),
    ("no metrics", {"batch_size": 8, "lr": 0.1}, [{"trial_id": "t1"}], ["no metrics in it"]),
]


@pytest.mark.parametrize(
    ("what", "params", "results", "parts"), BAD_RAY_TUNE, ids=[c[0] for c in BAD_RAY_TUNE]
)
def test_bad_values_are_one_line_naming_file_trial_and_value(
    what, params, results, parts, tmp_path, capsys
) -> None:
    study = tmp_path / "sweep"
    good = _tune_trial(study, "trial_0", _epochs(), {"batch_size": 4, "lr": 0.1})
    bad = _tune_trial(study, "trial_1", results, params)
    root = tmp_path / "runs"
    assert main(["import", "ray-tune", str(study), "--storage", str(root)]) == 2
    _one_line_error(capsys, "ray-tune trial 'sweep/", str(bad / "result.json"), *parts)
    _nothing_written(root)  # the good trial is not written either: all or nothing
    assert good.exists()


def test_undecodable_and_malformed_files_are_named(tmp_path, capsys) -> None:
    root = tmp_path / "runs"
    cases = {
        "result.json": (b"\xff\xfe not utf-8\n", "not UTF-8 text (byte 0xff at offset 0)"),
        "params.json": (b"{not json", "params.json: not valid JSON"),
    }
    for name, (data, expect) in cases.items():
        study = tmp_path / name / "sweep"
        d = _tune_trial(study, "trial_0", _epochs(), {"batch_size": 4, "lr": 0.1})
        (d / name).write_bytes(data)
        assert main(["import", "ray-tune", str(study), "--storage", str(root)]) == 2
        _one_line_error(capsys, str(d / name), expect)
    # A results line that is JSON but no object, in the middle of the file.
    study = tmp_path / "lines" / "sweep"
    d = _tune_trial(study, "trial_0", _epochs(), {"batch_size": 4, "lr": 0.1})
    lines = (d / "result.json").read_text().splitlines()
    (d / "result.json").write_text("\n".join([lines[0], "[1, 2]", *lines[1:]]) + "\n")
    assert main(["import", "ray-tune", str(study), "--storage", str(root)]) == 2
    _one_line_error(capsys, f"{d / 'result.json'}: line 2", "is not a JSON object")
    # params.json holding a list, not an object.
    (d / "result.json").write_text("\n".join(lines) + "\n")
    (d / "params.json").write_text("[1, 2]")
    assert main(["import", "ray-tune", str(study), "--storage", str(root)]) == 2
    _one_line_error(capsys, str(d / "params.json"), "not a JSON object")
    _nothing_written(root)


def test_csv_huge_field_non_utf8_and_bad_seed(tmp_path, capsys) -> None:
    root = tmp_path / "runs"
    header = ["run", "batch_size", "lr", "seed", "epoch", "val_loss", "notes"]

    def write(name: str, rows: list[list], raw: bytes | None = None) -> Path:
        path = tmp_path / name
        if raw is not None:
            path.write_bytes(raw)
            return path
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
        return path

    # A 200 KiB field (Python's csv module stops at 128 KiB): read, kept as a non-metric.
    big = write("big.csv", [["r", 8, 0.1, 0, e, 1.0 / e, "x" * 200_000] for e in (1, 2)])
    assert main(["import", "csv", str(big), "--storage", str(root)]) == 0
    assert "imported 1 trials" in capsys.readouterr().out
    # A field beyond the limit (16 MiB): one line with the file and the line number.
    huge = write("huge.csv", [["r", 8, 0.1, 0, 1, 1.0, "y" * (17 * 2**20)]])
    assert main(["import", "csv", str(huge), "--storage", str(root)]) == 2
    _one_line_error(capsys, f"{huge}: line", "field larger than field limit")
    latin = write("latin.csv", [], raw=",".join(header).encode() + b"\nr,8,0.1,0,1,1.0,caf\xe9\n")
    assert main(["import", "csv", str(latin), "--storage", str(root)]) == 2
    _one_line_error(capsys, str(latin), "not UTF-8 text (byte 0xe9")
    inf_seed = write("inf.csv", [["r", 8, 0.1, "Infinity", 1, 1.0, ""]])
    assert main(["import", "csv", str(inf_seed), "--storage", str(root)]) == 2
    _one_line_error(capsys, "csv trial 'inf.csv/r'", str(inf_seed), "seed 'Infinity'")


def test_tensorboard_runs_without_scalars_are_refused(tmp_path, capsys) -> None:
    """Garbage and empty event files used to become `completed` trials with 0 epochs."""
    for content, name in ((os.urandom(4096), "garbage"), (b"", "empty")):
        logs = tmp_path / name / "bs=32,lr=0.1"
        logs.mkdir(parents=True)
        (logs / "events.out.tfevents.1.host").write_bytes(content)
        root = tmp_path / f"runs-{name}"
        assert main(["import", "tensorboard", str(logs.parent), "--storage", str(root)]) == 2
        _one_line_error(capsys, str(logs), "no metrics in it")
        _nothing_written(root)
    # An event file that is a link out of the log folder is not read.
    logs = tmp_path / "linked" / "bs=32,lr=0.1"
    logs.mkdir(parents=True)
    target = tmp_path / "garbage" / "bs=32,lr=0.1" / "events.out.tfevents.1.host"
    os.symlink(target, logs / "events.out.tfevents.2.host")
    assert main(["import", "tensorboard", str(logs.parent), "--storage", str(root)]) == 2
    _one_line_error(capsys, "a link out of the imported folder")
