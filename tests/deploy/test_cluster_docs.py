"""README.md and docs/cluster.md show the exact cluster commands, and nothing anywhere runs
`ray submit` with its stop flag (it powers the head machine off after the script)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", REPO / "docs" / "cluster.md"]
COMMANDS = [
    "ray get-auth-token --generate",
    "ray up deploy/cluster.yaml",
    "ray submit deploy/cluster.yaml scheduler/submit.py examples/seed002.yaml",
    "ray dashboard deploy/cluster.yaml",
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- batchlab run examples/seed002.yaml",
    "ray down deploy/cluster.yaml",
]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_show_the_exact_commands(doc):
    text = doc.read_text()
    for cmd in COMMANDS:
        assert cmd in text, f"{doc.name} lacks `{cmd}`"


def test_paths_in_the_commands_exist():
    for cmd in COMMANDS:
        for word in cmd.split():
            if re.fullmatch(r"(deploy|scheduler|examples)/[\w.-]+", word):
                assert (REPO / word).is_file(), f"`{cmd}` names {word}, which does not exist"


def test_no_ray_submit_with_the_stop_flag_anywhere():
    stop = "--" + "stop"  # spelled apart so that this file does not match itself
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    # Docs, cluster configs and the scheduler have no use for the flag at all.
    for f in [
        *docs,
        *sorted(p for p in (REPO / "deploy").rglob("*") if p.is_file()),  # + slurm/, kuberay/
        *sorted((REPO / "scheduler").glob("*.py")),
    ]:
        assert stop not in f.read_text(), f"{f.relative_to(REPO)} mentions {stop}"
    for f in sorted((REPO / "tests").rglob("*.py")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            assert not ("submit" in line and stop in line), f"{f.relative_to(REPO)}:{n}"
