"""Schema of deploy/cluster.yaml (AWS) and deploy/cluster-local.yaml (existing machines).

Both are checked twice: by Ray's own launcher schema (`prepare_config` + `validate_config`,
offline), and by the rules batchlab needs: a head without GPUs, GPU workers with bounds,
the project and the token shipped by file_mounts, batchlab installed, the storage root,
token authentication on every node, the dashboard never on a public address, and a
"CHANGE:" comment on every value a user must replace.
"""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from tests.conftest import REPO

AWS = REPO / "deploy" / "cluster.yaml"
LOCAL = REPO / "deploy" / "cluster-local.yaml"
BOTH = pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
PROJECT_MOUNT = "~/batchlab"
TOKEN_FILE = "~/.ray/auth_token"


def _load(path) -> dict:
    return yaml.safe_load(path.read_text())


def _start_commands(cfg: dict) -> list[str]:
    return [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]]


def _exports(cfg: dict) -> dict[str, str]:
    """Variables the setup commands export in ~/.bashrc (every later login shell)."""
    out = {}
    for cmd in cfg["setup_commands"]:
        m = re.fullmatch(r"echo '(export (\w+)=(\S+))\s+# batchlab-cluster' >> ~/.bashrc", cmd)
        if m:
            out[m.group(2)] = m.group(3)
    return out


@BOTH
def test_ray_accepts_the_config(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(path)))  # raises on a schema error


@BOTH
def test_file_mounts_ship_the_project_and_the_token(path):
    cfg = _load(path)
    assert cfg["file_mounts"] == {PROJECT_MOUNT: ".", TOKEN_FILE: TOKEN_FILE}
    # rsync honours .gitignore: no local results, venvs or caches are uploaded.
    assert cfg["rsync_filter"] == [".gitignore"]
    assert "batchlab-runs/" in (REPO / ".gitignore").read_text().splitlines()


@BOTH
def test_setup_installs_batchlab_from_the_mount_and_sets_the_environment(path):
    cfg = _load(path)
    setup = cfg["setup_commands"]
    assert f"python3 -m pip install -e {PROJECT_MOUNT}" in setup
    import ray

    assert f'python3 -m pip install -U "ray[default]=={ray.__version__}"' in setup
    env = _exports(cfg)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["BATCHLAB_STORAGE"]
    # The export lines are removed before they are appended: `ray up` twice adds nothing.
    assert setup.index("sed -i '/# batchlab-cluster$/d' ~/.bashrc") < min(
        i for i, c in enumerate(setup) if c.startswith("echo 'export")
    )


@BOTH
def test_token_auth_on_every_ray_start_and_dashboard_on_loopback(path):
    cfg = _load(path)
    starts = [c for c in _start_commands(cfg) if "ray start" in c]
    assert len(starts) == 2
    for cmd in starts:
        assert "RAY_AUTH_MODE=token ray start" in cmd, cmd
    head = shlex.split(next(c for c in cfg["head_start_ray_commands"] if "ray start" in c))
    assert "--dashboard-host=127.0.0.1" in head
    text = path.read_text()
    assert "0.0.0.0" not in text  # nothing binds to every interface
    assert "--ray-client-server-port" not in text and "--dashboard-port" not in text


def test_aws_head_has_no_gpu_and_gpu_workers_autoscale():
    cfg = _load(AWS)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # schedules; never trains
    assert not re.match(r"(p|g|inf|trn)\d", head["node_config"]["InstanceType"])
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert len(workers) == 1
    (gpu,) = workers.values()
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["CPU"] >= 1
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= cfg["max_workers"]
    assert re.match(r"(p|g)\d", gpu["node_config"]["InstanceType"])
    assert cfg["idle_timeout_minutes"] > 0 and cfg["upscaling_speed"] > 0
    # Workers write to S3: they need an instance profile (the head gets one by default).
    assert "instance-profile" in gpu["node_config"]["IamInstanceProfile"]["Arn"]
    assert _exports(cfg)["BATCHLAB_STORAGE"].startswith("s3://")
    assert "BATCHLAB_STORAGE_SHARED" not in _exports(cfg)


def test_aws_opens_no_port_to_the_internet():
    cfg = _load(AWS)
    # No extra inbound rules: the launcher's default security group opens SSH only.
    assert "security_group" not in cfg["provider"]
    for t in cfg["available_node_types"].values():
        assert "SecurityGroupIds" not in t["node_config"]
        assert "NetworkInterfaces" not in t["node_config"]  # no forced public IP setup
    assert cfg["provider"].get("use_internal_ips", False) is False


def test_local_head_has_no_gpu_and_lists_machines():
    cfg = _load(LOCAL)
    p = cfg["provider"]
    assert p["type"] == "local" and p["head_ip"] and len(p["worker_ips"]) >= 1
    assert p["head_ip"] not in p["worker_ips"]
    assert cfg["min_workers"] == cfg["max_workers"] == len(p["worker_ips"])
    assert "available_node_types" not in cfg  # the local provider rejects node types
    head = shlex.split(next(c for c in cfg["head_start_ray_commands"] if "ray start" in c))
    assert "--num-gpus=0" in head and "--num-cpus=0" in head
    assert cfg["auth"]["ssh_user"] and cfg["auth"]["ssh_private_key"]
    env = _exports(cfg)
    # A local-path root on several machines must be declared shared (scheduler/cluster.py).
    assert env["BATCHLAB_STORAGE"].startswith("/") and env["BATCHLAB_STORAGE_SHARED"] == "1"


# Values a user must replace, by file: a fragment of the line, checked to carry "CHANGE:".
MUST_CHANGE = {
    AWS: [
        "region:", "availability_zone:", "ssh_user:", "ImageId:", "InstanceType: g",
        "arn:aws:iam::", "BATCHLAB_STORAGE=", "cluster_name:", 'ray[default]==',
    ],
    LOCAL: [
        "head_ip:", "worker_ips:", "ssh_user:", "ssh_private_key:", "min_workers:",
        "max_workers:", "BATCHLAB_STORAGE=", "cluster_name:", 'ray[default]==',
    ],
}  # fmt: skip


@BOTH
def test_every_value_to_change_is_marked(path):
    lines = path.read_text().splitlines()
    for fragment in MUST_CHANGE[path]:
        hits = [
            i
            for i, line in enumerate(lines)
            if fragment in line and not line.lstrip().startswith("#")
        ]
        assert hits, f"{path.name}: no line with {fragment!r}"
        for i in hits:
            # The mark is on the line itself or in the comment block right above it.
            above = []
            j = i - 1
            while j >= 0 and lines[j].lstrip().startswith("#"):
                above.append(lines[j])
                j -= 1
            assert "CHANGE:" in lines[i] or any("CHANGE:" in a for a in above), (
                f"{path.name}:{i + 1}: {lines[i].strip()!r} is a value to change; mark it "
                "with a '# CHANGE: ...' comment saying what to put there"
            )


@BOTH
def test_environment_lines_are_idempotent_in_a_login_shell(path, tmp_path):
    """Runs the ~/.bashrc part of setup_commands twice (as two `ray up`s would) in a scratch
    HOME; a later shell sees each variable once, with the configured value."""
    import subprocess

    cfg = _load(path)
    env_cmds = [c for c in cfg["setup_commands"] if "~/.bashrc" in c]
    (tmp_path / ".bashrc").write_text("# the user's own lines\nexport KEEP=1\n")
    for _ in range(2):
        for cmd in env_cmds:
            subprocess.run(["bash", "-c", cmd], env={"HOME": str(tmp_path)}, check=True)
    bashrc = (tmp_path / ".bashrc").read_text()
    assert bashrc.startswith("# the user's own lines\nexport KEEP=1\n")
    expected = _exports(cfg)
    for name in expected:
        assert bashrc.count(f"export {name}=") == 1, bashrc
    shown = subprocess.run(
        ["bash", "-c", "source ~/.bashrc; " + "; ".join(f'echo "${n}"' for n in expected)],
        env={"HOME": str(tmp_path)}, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert shown == list(expected.values())
