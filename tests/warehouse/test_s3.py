"""Object storage end to end against a real S3 API server on 127.0.0.1 (moto's standalone
server): the same code writes, reads, compacts, checks and serves read-only SQL over
`s3://bucket/prefix`; a grid run by the scheduler on local Ray writes there; credentials
come from the environment only and are never stored."""

from __future__ import annotations

import os
import warnings

import pytest

from warehouse.check import check_warehouse, quarantine_corrupt
from warehouse.compact import compact
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.sql import SQLRefused, run_readonly
from warehouse.store import read_trial_rows

# Credentials come from the environment only. Ray's worker processes inherit the driver's
# environment when the local Ray starts (the session's `ray_local` fixture), which happens
# after test collection: set them now. moto accepts any credentials; real ones are kept.
for _k, _v in {
    "AWS_ACCESS_KEY_ID": "batchlab-test-key",
    "AWS_SECRET_ACCESS_KEY": "batchlab-test-secret-never-stored",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_k, _v)

BUCKET = "batchlab-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    srv = server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    srv.stop()


def _root(endpoint: str, prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}?endpoint_override={endpoint}&scheme=http"


def _objects(endpoint: str, prefix: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def test_warehouse_on_s3(s3_endpoint, fake, sums):
    root = _root(s3_endpoint, "unit")
    layout = Layout.open(root)
    assert not layout.is_local and layout.base == f"{BUCKET}/unit"
    for i in range(6):
        fake(layout, f"exp{i % 2}", i, probes=i % 2 == 0)
    con = connect(root)
    before = sums(con)
    assert before["trials"][0] == 6 and before["epochs"][0] == 18 and before["probes"][0] == 3
    assert {r["trial_id"] for r in read_trial_rows(layout, "exp0")} == {
        "t000000000000000", "t000000000000002", "t000000000000004"
    }  # fmt: skip

    # A garbage object: skipped by readers, reported, quarantined.
    junk = layout.table_file("epochs", "exp0", "junk")
    layout.put_bytes(junk, b"not parquet " * 8)
    with pytest.warns(RuntimeWarning, match="1 corrupt"):
        assert sums(connect(root)) == before
    (c,) = quarantine_corrupt(root)
    assert (
        c.path == junk
        and c.moved_to == f"{BUCKET}/unit/quarantine/tables/epochs/experiment=exp0/junk.parquet"
    )

    report = compact(root, min_rows=1, grace_s=0)
    assert {d.mode for d in report.dirs} == {"append"}
    assert all(not layout.table_files(t).per_trial for t in ("trials", "epochs", "steps"))
    assert sums(connect(root)) == before
    fake(layout, "exp1", 1, value=9.0, probes=False)  # re-written after compaction
    assert connect(root).execute("SELECT count(*) FROM epochs").fetchone()[0] == 18
    compact(root, min_rows=1, grace_s=0)
    assert connect(root).execute("SELECT count(*) FROM probes").fetchone()[0] == 3
    assert check_warehouse(root) == []

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_readonly(root, "SELECT count(*) AS n FROM trials")["n"].tolist() == [6]
        # epochs is read at query time, through a pyarrow dataset, from the locked connection
        assert run_readonly(root, "SELECT count(*) AS n FROM epochs")["n"].tolist() == [18]
    with pytest.raises(SQLRefused, match="Cannot access file"):
        run_readonly(root, "SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(SQLRefused, match="COPY is not allowed"):
        run_readonly(root, "COPY trials TO '/tmp/x.csv'")


def test_endpoint_from_the_environment(s3_endpoint, fake, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    root = f"s3://{BUCKET}/env?scheme=http"
    fake(Layout.open(root), "e", 1)
    assert connect(root).execute("SELECT count(*) FROM epochs").fetchone()[0] == 3


def test_credentials_in_the_uri_are_refused():
    for root in (
        f"s3://AKIA:secret@{BUCKET}/p",
        f"s3://{BUCKET}/p?access_key=AKIA&secret_key=s",
        f"s3://{BUCKET}/p?session_token=t",
    ):
        with pytest.raises(ValueError, match="credentials in the URI"):
            Layout.open(root)


@pytest.mark.slow
def test_grid_on_local_ray_writes_to_s3(ray_local, s3_endpoint, sums):
    """The scheduler runs a grid on local Ray with an s3:// storage root; DuckDB queries it;
    a re-run skips every trial; no object holds the credentials."""
    from scheduler.runner import plan, run_grid
    from scheduler.spec import parse_spec

    spec = parse_spec(
        {
            "experiment": "s3grid",
            "dataset": "mnist1d",
            "model": {"name": "mlp", "hidden": [16]},
            "max_epochs": 2,
            "grid": {"batch_size": [128, 512], "lr": [0.05], "seed": [0]},
            "resources": {"cpus_per_trial": 1},
        }
    )
    root = _root(s3_endpoint, "grid")
    report = run_grid(spec, root, progress=False)
    assert report.counts["completed"] == 2, report.results

    con = connect(root)
    assert con.execute("SELECT count(*), min(epochs_run) FROM trials").fetchone() == (2, 2)
    assert con.execute("SELECT count(*) FROM epochs").fetchone()[0] == 4
    steps = con.execute("SELECT sum(steps_run) FROM trials").fetchone()[0]
    assert con.execute("SELECT count(*) FROM steps").fetchone()[0] == steps
    assert len(plan(spec, Layout.open(root)).to_run) == 0

    before = sums(con)
    compact(root, grace_s=0)
    assert sums(connect(root)) == before
    assert len(plan(spec, Layout.open(root)).to_run) == 0

    objects = _objects(s3_endpoint, "grid/")
    assert any(k.startswith("grid/checkpoints/") for k in objects)
    assert any(k.startswith("grid/runs/") for k in objects)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    key_id = os.environ["AWS_ACCESS_KEY_ID"].encode()
    leaked = [k for k, body in objects.items() if secret in body or key_id in body]
    assert not leaked, f"credentials written to the warehouse: {leaked}"
