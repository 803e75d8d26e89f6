"""Every shell command of README.md and docs/*.md still matches the CLI, and runs (issue 23).

Two checks (tests/docs/doc_commands.py extracts the commands):

- static, every command (shell blocks, `batchlab ...` inline spans, docs/cli.md's command
  table, `batchlab` in the comments of examples/): the subcommand and every flag exist,
  values with choices are allowed, a shell-block `batchlab` line parses in full, the repo
  files it names exist, a `python FILE.py --flag` names a flag the file defines;
- run, every shell-block command that a CPU box can run in seconds: with bash, in a
  sandbox folder holding a copy of the committed demo warehouse as `./batchlab-runs` (the
  default root) and `./runs`, a `grid.yaml` (a tiny grid), a `query.sql`, small Ray Tune /
  TensorBoard / CSV studies under the names the docs use, and links to the checkout's
  folders (examples/, deploy/ ...); exit 0 required. HOME is the sandbox's, so
  `~/ray_results/...` resolves there.

The commands that cannot run here are in SKIPS, once (pattern -> reason); each is reported
as a pytest skip with its reason (`pytest -rs tests/docs`), and the whole table is printed by
test_skip_table_is_used.

Wall time (`python -m pytest -q -rs tests/docs --durations=5`): about 2.5 minutes on the
shared 2-core box under a load average of ~20 from other jobs, half of it the one real
`batchlab run ... --max-epochs 1` (docs/cli.md: the embedded Ray starts); the static checks
take seconds.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.doc_commands import REPO, DocCommand, all_commands, problems

# command pattern (re.search) -> why it does not run here. The first match wins.
SKIPS: list[tuple[str, str]] = [
    (r"^pip install", "installs packages: network, and changes the environment running the tests"),
    (r"python -m pytest", "the test suite itself (recursion); the test files it names are checked"),
    (
        r"^ray |^RAY_AUTH_MODE=|^export RAY_AUTH_MODE",
        "needs a Ray cluster (deploy/cluster*.yaml, docs/cluster.md); tests/deploy covers the files",
    ),
    (
        r"^(sbatch|squeue|scancel) |^tail -f batchlab-",
        "needs a SLURM cluster (deploy/slurm); tests/deploy/test_slurm.py checks the script",
    ),
    (
        r"batchlab (import|export) .*mlflow",
        "needs an MLflow tracking store; tests/integrations runs MLflow import/export via the CLI",
    ),
    (
        r"^(kubectl|helm) ",
        "needs a Kubernetes cluster with the KubeRay operator; tests/deploy checks deploy/kuberay",
    ),
    (
        r"s3://",
        "needs an S3 bucket and its credentials; tests/warehouse/test_s3.py uses a local moto server",
    ),
    (r"^export AWS_", "sets cloud credentials"),
    (r"--address auto", "connects to a running Ray cluster"),
    (
        r"^batchlab app|^streamlit run",
        "a server that runs until stopped; tests/app renders the pages through AppTest",
    ),
    (
        r"^batchlab status\b.*--watch",
        "refreshes until Ctrl-C; tests/scheduler/test_live.py covers `batchlab status`",
    ),
    (
        r"^batchlab run examples/quick\.yaml$",
        "minutes on 2 cores (14 trials x 30 epochs); tests/examples runs it with --max-epochs 1",
    ),
    (
        r"benchmarks/app_pages\.py",
        "drives Chromium over every page for minutes and rewrites benchmarks/results",
    ),
    (r"benchmarks/grid_throughput\.py --json grid", "a GPU benchmark"),
    (
        r"benchmarks/grid_throughput\.py --tiny",
        "1-2 minutes of CPU; tests/benchmarks/test_grid_throughput.py runs it",
    ),
    (
        r"benchmarks/gpu_check\.py",
        "the GPU check; tests/benchmarks/test_gpu_check.py runs its --tiny rehearsal",
    ),
    (r"device-bundle\.sh", "the device machines' tooling (../shared/tools), not part of batchlab"),
]

COMMANDS = all_commands()
RUNNABLE = [c for c in COMMANDS if c.runnable]


def skip_reason(cmd: DocCommand) -> str | None:
    return next((why for pat, why in SKIPS if re.search(pat, cmd.text)), None)


def test_commands_found() -> None:
    """The extraction sees the docs' commands (a broken parser would test nothing)."""
    texts = [c.text for c in COMMANDS]
    assert "batchlab sql --format csv < query.sql" in texts
    assert any(t.startswith("batchlab run GRID.yaml [--dry-run]") for t in texts)  # cli.md table
    assert len(RUNNABLE) >= 40 and len(COMMANDS) >= 150, len(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_command_matches_the_code(cmd: DocCommand) -> None:
    """Subcommands, flags, choices, file paths and python scripts' flags exist."""
    assert problems(cmd) == [], f"{cmd.source}: `{cmd.text}` no longer matches the code"


def test_skip_table_is_used() -> None:
    """Every SKIPS pattern still matches a documented command (no stale rows); prints the
    table with the commands each row skips."""
    print("\ncommands the docs test does not run (pattern -> reason):")
    for pat, why in SKIPS:
        hits = [c for c in RUNNABLE if skip_reason(c) == why]
        assert hits, f"SKIPS row {pat!r} matches no documented command: remove it"
        print(f"  {pat}  ->  {why}")
        for c in hits:
            print(f"      SKIP {c}")


# --- the sandbox the runnable commands run in -------------------------------------------

TINY_GRID = """\
experiment: tiny
dataset: mnist1d
model: {name: mlp, hidden: [32]}
max_epochs: 3
grid: {batch_size: [64, 256], lr: [0.05], seed: [0, 1]}
resources: {cpus_per_trial: 1}
"""


def _epochs(bs: int, seed: int) -> list[dict]:
    """Made-up but plausible curves: larger batches and later seeds a little worse."""
    out = []
    for e in range(1, 4):
        train = 2.0 / e + bs / 2000 + seed / 100
        out.append(
            {"epoch": e, "train_loss": train, "val_loss": train + 0.1, "val_acc": 0.5 + e / 10}
        )
    return out


def _ray_tune_study(folder: Path) -> None:
    """A Ray Tune experiment folder as Tune writes it: one folder per trial with params.json
    and result.json (one JSON object per reported iteration)."""
    for i, (bs, seed) in enumerate([(32, 0), (32, 1), (256, 0), (256, 1)]):
        trial = folder / f"train_fn_ab12c_{i:05d}_{i}_batch_size={bs},seed={seed}_2026-01-01"
        trial.mkdir(parents=True)
        config = {"batch_size": bs, "lr": 0.1, "seed": seed}
        (trial / "params.json").write_text(json.dumps(config))
        rows = [
            {
                **r,
                "training_iteration": r["epoch"],
                "time_this_iter_s": 0.5,
                "time_total_s": 0.5 * r["epoch"],
                "timestamp": 1767225600 + r["epoch"],
                "trial_id": f"ab12c_{i:05d}",
                "config": config,
            }
            for r in _epochs(bs, seed)
        ]
        (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _tensorboard_study(folder: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for bs in (32, 256):
        w = SummaryWriter(str(folder / f"batch_size={bs},lr=0.1,seed=0"))
        for r in _epochs(bs, 0):
            w.add_scalar("Loss/train", r["train_loss"], r["epoch"])
            w.add_scalar("Loss/val", r["val_loss"], r["epoch"])
        w.close()


def _csv_study(path: Path) -> None:
    """A W&B-style export: run name, config columns, one row per epoch."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Name", "config.bs", "lr", "epoch", "train_loss", "val_loss"])
        for bs in (32, 256):
            for r in _epochs(bs, 0):
                w.writerow([f"run-{bs}", bs, 0.1, r["epoch"], r["train_loss"], r["val_loss"]])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, data_cache) -> tuple[Path, dict[str, str]]:
    """The folder the commands run in, and their environment."""
    box = tmp_path_factory.mktemp("docs-sandbox")
    for name in ("examples", "deploy", "scheduler", "benchmarks", "app", "tests", "docs"):
        (box / name).symlink_to(REPO / name, target_is_directory=True)
    ignore = shutil.ignore_patterns("README.md", "REPORT.md")
    for root in ("batchlab-runs", "runs"):
        shutil.copytree(REPO / "examples" / "results", box / root, ignore=ignore)
    (box / "grid.yaml").write_text(TINY_GRID)
    (box / "query.sql").write_text("SELECT experiment, count(*) AS trials FROM trials GROUP BY ALL")
    home = box / "home"
    for study in ("my_sweep", "bs_sweep"):
        _ray_tune_study(home / "ray_results" / study)
    _tensorboard_study(box / "runs" / "tb_logs")
    _csv_study(box / "wandb_export.csv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHLAB_STORAGE", "RAY_"))}
    env.update(
        HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        BATCHLAB_DATA_CACHE=str(data_cache),
    )
    return box, env


@pytest.mark.parametrize("cmd", RUNNABLE, ids=str)
def test_command_runs(cmd: DocCommand, sandbox) -> None:
    """The command exits 0 in the sandbox (commands of one file run in document order:
    an import before the report on it)."""
    why = skip_reason(cmd)
    if why:
        pytest.skip(f"{cmd.text}: {why}")
    box, env = sandbox
    p = subprocess.run(
        ["bash", "-c", cmd.text],
        cwd=box,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, (
        f"{cmd.source}: `{cmd.text}` exited {p.returncode}\n--- stdout\n{p.stdout[-3000:]}"
        f"\n--- stderr\n{p.stderr[-3000:]}"
    )
    for flag in ("--output", "--out"):  # what the command says it writes is there
        if flag in cmd.text.split():
            toks = cmd.text.split()
            assert (box / toks[toks.index(flag) + 1]).exists(), p.stdout


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("batchlab run grid.yaml --no-such-flag", "unknown flag --no-such-flag"),
        ("batchlab runn grid.yaml", "unknown subcommand 'runn'"),
        ("batchlab run examples/no-such.yaml --dry-run", "examples/no-such.yaml does not exist"),
        ("batchlab export --format xml --output out", "--format xml"),
        ("batchlab import wandb runs.csv", "'wandb' is not one of"),
        ("batchlab export --output out", "argparse refuses it"),  # --format is required
        ("python benchmarks/cpu_grid.py --no-such-option", "defines no option --no-such-option"),
        ("python -m workers.no_such_module", "module workers.no_such_module does not exist"),
    ],
)
def test_the_checker_catches_a_stale_command(text: str, found: str) -> None:
    """What the static check reports for commands that no longer match the code."""
    got = problems(DocCommand("doc.md:1", text, True))
    assert any(found in p for p in got), got


def test_every_subcommand_and_option_is_documented() -> None:
    """The other direction: every subcommand of the CLI has a row in docs/cli.md's command
    table, and every long option of every subcommand is named in README.md or docs/*.md."""
    from tests.docs.doc_commands import _subparsers, doc_files

    cli_md = (REPO / "docs" / "cli.md").read_text()
    table = cli_md[cli_md.index("| command |") : cli_md.index("\n\n", cli_md.index("| command |"))]
    docs = "\n".join(p.read_text() for p in doc_files())
    missing = []
    for name, sub in _subparsers().items():
        if not re.search(rf"^\| `{re.escape(name)}\b", table, re.M):
            missing.append(f"`{name}`: no row in docs/cli.md's command table")
        for opt in sub._option_string_actions:
            if opt.startswith("--") and opt != "--help" and not re.search(rf"{opt}\b", docs):
                missing.append(f"`batchlab {name} {opt}`: named in no doc")
    assert missing == [], "\n".join(missing)
