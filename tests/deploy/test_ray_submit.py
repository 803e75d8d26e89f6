"""`ray submit deploy/cluster-local.yaml scheduler/submit.py GRID` through Ray's own launcher.

These tests pin private behaviour of Ray's cluster launcher on purpose (Ray 2.60:
`ray.scripts.scripts.submit` -> `ray.autoscaler._private.commands.rsync` / `exec_cluster`
-> `NodeUpdaterThread` -> `SSHCommandRunner`): what `ray submit` uploads (this one script, to
`~/submit.py` on the head, nothing else) and the exact command it runs there (`python
~/submit.py ARGS`, ARGS joined by spaces, unquoted, in a login shell). scheduler/submit.py
and docs/cluster.md rely on both. Only the last step is replaced: `SSHCommandRunner._run_helper`,
which would start `rsync` / `ssh`, records the command line instead. The launcher's config
bootstrap, node provider (`local`, its state file under a temporary RAY_TMPDIR), head-node
lookup and command building all run for real. If a Ray upgrade changes any of this, these
tests fail: re-read `ray submit` in the new version and update submit.py, the docs and here.
"""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import REPO

LOCAL_YAML = "deploy/cluster-local.yaml"


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    """Ray's launcher with the head of deploy/cluster-local.yaml up and every rsync/ssh
    recorded instead of run. Yields (cluster name, recorded command lines, config)."""
    from ray.autoscaler._private import command_runner
    from ray.autoscaler._private.local.node_provider import LocalNodeProvider
    from ray.autoscaler.tags import (
        NODE_KIND_HEAD,
        STATUS_UP_TO_DATE,
        TAG_RAY_NODE_KIND,
        TAG_RAY_NODE_STATUS,
    )

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # the local provider's state file
    calls: list[list[str]] = []

    def record(self, final_cmd, with_output=False, exit_on_fail=False, silent=False):
        calls.append(list(final_cmd))
        return 0

    monkeypatch.setattr(command_runner.SSHCommandRunner, "_run_helper", record)
    # Would create the SSH ControlMaster socket folder under /tmp; nothing connects here.
    monkeypatch.setattr(
        command_runner.SSHCommandRunner, "_ensure_ssh_control_path", lambda self: None
    )
    config = yaml.safe_load((REPO / LOCAL_YAML).read_text())
    name = f"batchlab-test-{uuid.uuid4().hex[:8]}"
    # What `ray up` leaves behind: the head node, running and up to date.
    provider = LocalNodeProvider(config["provider"], name)
    tags = {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE}
    provider.state.put(config["provider"]["head_ip"], {"tags": tags, "state": "running"})
    return name, calls, config


def _ray_submit(args: list[str]):
    from ray.scripts.scripts import submit

    return CliRunner().invoke(submit, args, catch_exceptions=False)


def test_ray_submit_uploads_only_the_script_and_runs_it_on_the_head(launcher):
    name, calls, config = launcher
    result = _ray_submit(
        ["--cluster-name", name, "--no-config-cache", LOCAL_YAML, "scheduler/submit.py",
         "examples/seed002.yaml"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    user, head = config["auth"]["ssh_user"], config["provider"]["head_ip"]
    assert len(calls) == 2, calls  # one upload, one remote command: nothing else
    upload, remote = calls

    # 1. rsync of this one file to ~/submit.py on the head; not the grid, not the project.
    assert upload[0] == "rsync" and "-avz" in upload
    assert upload[-2:] == ["scheduler/submit.py", f"{user}@{head}:~/submit.py"]
    assert not any("seed002" in part for part in upload)
    ssh_opts = shlex.split(upload[upload.index("--rsh") + 1])
    assert ssh_opts[:3] == ["ssh", "-i", config["auth"]["ssh_private_key"]]

    # 2. the exact remote command: the script with the grid path, as typed, unquoted.
    assert remote[:2] == ["ssh", "-tt"]
    at = remote.index(f"{user}@{head}")
    assert remote[at + 1 :] == [
        "bash", "--login", "-c", "-i",
        shlex.quote(
            "source ~/.bashrc; export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore && "
            "(python ~/submit.py examples/seed002.yaml)"
        ),
    ]  # fmt: skip
    assert "shutdown" not in " ".join(remote)  # no `--stop`: the head stays up


def test_ray_submit_passes_options_after_double_dash_unquoted(launcher):
    name, calls, _ = launcher
    result = _ray_submit(
        ["--cluster-name", name, "--no-config-cache", LOCAL_YAML, "scheduler/submit.py", "--",
         "examples/my grid.yaml", "--dry-run"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    inner = shlex.split(calls[-1][-1])[0]  # what the login shell on the head runs
    # The space in "my grid.yaml" is not quoted: the head's shell splits it into two words
    # (scheduler/submit.py joins them again: test_resolve_grid_prefers_the_mounted_project).
    assert inner.endswith("(python ~/submit.py examples/my grid.yaml --dry-run)")
    assert shlex.split(inner.rsplit("(", 1)[1].rstrip(")")) == [
        "python", "~/submit.py", "examples/my", "grid.yaml", "--dry-run",
    ]  # fmt: skip


def test_submitted_script_and_grid_exist_where_the_commands_say():
    assert (REPO / "scheduler" / "submit.py").is_file()
    assert (REPO / "examples" / "seed002.yaml").is_file()
    mounts = yaml.safe_load((REPO / LOCAL_YAML).read_text())["file_mounts"]
    # The grid path is resolved inside the project mounted at ~/batchlab on the head.
    assert mounts["~/batchlab"] == "."
    assert Path(REPO / mounts["~/batchlab"] / "examples" / "seed002.yaml").is_file()
