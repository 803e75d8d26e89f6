"""No way in for a stranger: the embedded Ray needs its token, the app listens on 127.0.0.1
only, `batchlab sql` is read-only, credentials never travel in a storage URI.

Covered elsewhere (docs/reliability.md): the Jobs API of a cluster refusing requests without
the token (tests/scheduler/test_cluster.py::test_jobs_api_refuses_requests_without_the_token),
the full list of refused SQL statements (tests/app/test_pages.py::test_sql_page_refuses and
the warehouse SQL tests), no secret written to the warehouse or the logs
(tests/reliability/test_driver_interrupts.py::test_no_secret_reaches_the_warehouse_or_the_logs).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from batchlab import cli, cli_app
from tests.reliability.helpers import REPO, kill_pids, pids_mentioning

HEAD = """
import json, os, time
import ray
from scheduler.runner import init_ray
init_ray(num_cpus=1)
node = ray.nodes()[0]
print(json.dumps({
    "gcs": ray.get_runtime_context().gcs_address, "ip": node["NodeManagerAddress"],
    "agent_port": node["RuntimeEnvAgentPort"], "auth_mode": os.environ.get("RAY_AUTH_MODE"),
}), flush=True)
time.sleep(600)
"""
STRANGER = "import ray, sys; ray.init(address=sys.argv[1]); print('CONNECTED', flush=True)"
REFUSED = (
    "Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
)


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    buf = b""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            buf += chunk
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0].decode()
    raise AssertionError(f"no line from the process in {timeout_s} s: {buf!r}")


def _http_status(url: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=b"", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _assert_refused(gcs: str, env: dict[str, str]) -> None:
    """A `ray.init(address=gcs)` in its own process gets the GCS's "Unauthenticated"; it
    would only retry after that, so it is stopped there."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STRANGER, gcs], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    seen = b""
    try:
        deadline = time.monotonic() + 120
        while REFUSED.encode() not in seen and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                seen += chunk
                if chunk:
                    continue
            assert proc.poll() is None, seen.decode()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert REFUSED.encode() in seen, seen.decode()[-3000:]
    assert b"CONNECTED" not in seen


@pytest.mark.slow
def test_embedded_ray_refuses_clients_without_its_token(ray_tmp, tmp_path):
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(k, None)  # exactly what a user's shell has: batchlab's defaults decide
    head = subprocess.Popen([sys.executable, "-c", HEAD], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        info = json.loads(_read_line(head, 180))
        # The embedded instance started in token mode, with a token on disk.
        assert info["auth_mode"] == "token"
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        assert len(token) >= 32

        # HTTP (the runtime-env agent, the HTTP endpoint the embedded instance exposes; it
        # starts no dashboard and so no Jobs API): no token 401, a wrong one 403, the right 200.
        url = f"http://{info['ip']}:{info['agent_port']}/get_or_create_runtime_env"
        assert _http_status(url, {}) == 401
        assert _http_status(url, {"Authorization": "Bearer " + "0" * 32}) == 403
        assert _http_status(url, {"Authorization": f"Bearer {token}"}) == 200

        # gRPC: the GCS refuses, at its first request, a client that sends no token (another
        # user's home, no token variables) and one that sends a guessed token.
        home = tmp_path / "stranger-home"
        home.mkdir()
        # The embedded instance listens on 127.0.0.1 only (test_shutdown.py checks every
        # port), so the stranger is a local user; in Ray's one-machine mode its client keeps
        # 127.0.0.1 instead of swapping in the machine's network address.
        stranger = {**env, "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        _assert_refused(info["gcs"], stranger)
        _assert_refused(info["gcs"], {**stranger, "RAY_AUTH_MODE": "token",
                                      "RAY_AUTH_TOKEN": os.urandom(16).hex()})  # fmt: skip
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(30)
        kill_pids(pids_mentioning(ray_tmp))


def test_app_binds_to_localhost_unless_told_otherwise(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(cli_app.subprocess, "call", lambda cmd, env=None: calls.append(cmd) or 0)
    assert cli.main(["app", "--storage", str(tmp_path)]) == 0
    assert cli.main(["app", "--host", "0.0.0.0", "--port", "9000"]) == 0
    default, explicit = calls
    assert default[default.index("--server.address") + 1] == "127.0.0.1"
    assert default[default.index("--server.port") + 1] == "8501"
    assert default[default.index("--server.headless") + 1] == "true"
    assert explicit[explicit.index("--server.address") + 1] == "0.0.0.0"  # an explicit choice
    assert "http://127.0.0.1:8501" in capsys.readouterr().out


def _listeners(port: int) -> list[str]:
    """Addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, p = local.split(":")
                if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                    if len(addr) == 8:
                        out.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
                    else:
                        words = [bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, 32, 8)]
                        out.append(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return out


@pytest.mark.slow
def test_app_server_listens_on_localhost_only(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(tmp_path)}  # no user-level Streamlit config
    app = subprocess.Popen(
        [sys.executable, "-m", "batchlab.cli", "app", "--storage", str(tmp_path / "runs"),
         "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _listeners(port) and time.monotonic() < deadline:
            assert app.poll() is None, "the app exited"
            time.sleep(0.3)
        assert _listeners(port) == ["127.0.0.1"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=30) as r:
            assert r.read() == b"ok"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(app.pid, signal.SIGKILL)
        app.wait(30)


REFUSED_SQL = {
    "COPY (SELECT 1) TO '{out}'": "COPY is not allowed",
    "ATTACH '{out}' AS other": "ATTACH is not allowed",
    "INSTALL httpfs": "INSTALL is not allowed",
    "SET enable_external_access = true": "SET is not allowed",
    "SELECT * FROM read_csv('/etc/passwd')": 'Cannot access file "/etc/passwd"',
    "CREATE TABLE t AS SELECT 1": "CREATE is not allowed",
}


@pytest.mark.parametrize("statement", REFUSED_SQL)
def test_sql_cli_refuses_writes_and_outside_access(statement, tmp_path, capsys):
    out = tmp_path / "written"
    sql = statement.format(out=out)
    assert cli.main(["sql", sql, "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and REFUSED_SQL[statement] in err, err
    assert not out.exists() and not (tmp_path / "runs").exists()
    # A read of a root without a warehouse says so (exit 3, docs/cli.md), not 0 rows.
    assert cli.main(["sql", "SELECT count(*) AS n FROM trials", "--storage", str(tmp_path)]) == 3


@pytest.mark.parametrize(
    "root",
    [
        "s3://AKIAEXAMPLE:{secret}@bucket/runs",
        "s3://bucket/runs?region=eu-west-1&secret_key={secret}",
    ],
)
def test_storage_uri_with_credentials_is_refused_without_echoing_them(root, tmp_path, capsys):
    secret = "sentinel-" + os.urandom(8).hex()
    grid = tmp_path / "grid.yaml"
    grid.write_text("experiment: x\ndataset: digits\n")
    rc = cli.main(["run", str(grid), "--dry-run", "--storage", root.format(secret=secret)])
    captured = capsys.readouterr()
    assert rc == 2
    assert "credentials in the URI" in captured.err and "AWS_SECRET_ACCESS_KEY" in captured.err
    assert secret not in captured.err + captured.out
