"""Running on a multi-node Ray cluster: is the storage root the same place on every node?

On one machine every trial writes to the same disk. On a cluster each trial runs on some
node and writes its rows to the storage root *as that node sees it*, while the driver (on
the head node) plans the grid, skips finished trials and builds `batchlab.duckdb` from the
root *as the head sees it*; a trial retried on another node resumes from checkpoints it
finds there. All of them must be one place. Before trials run on a cluster,
`check_cluster` makes sure that:

1. a local-path root is used only while trials stay on the driver's node, or when it is
   declared shared (`--storage-shared` of `scheduler/submit.py`, `BATCHLAB_STORAGE_SHARED=1`):
   a folder mounted at the same path on every node (NFS, EFS, Lustre). Otherwise it is
   refused with an explanation; an object store root (`s3://...`) needs no declaration;
2. every alive node reads a file the driver has just written under the root, and the driver
   reads the file each node writes back (proves the mount, or the s3 credentials, of every
   node).

Nodes that an autoscaler adds after the check are not probed: give every node type the same
mounts and credentials (deploy/cluster.yaml does). See docs/cluster.md.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from dataclasses import dataclass
from typing import IO, Any

from scheduler.spec import GridSpec
from warehouse.layout import Layout

# Truthy values of $BATCHLAB_STORAGE_SHARED.
_TRUE = ("1", "true", "yes", "on")
PROBE_TIMEOUT_S = 60.0  # how long each node gets to answer the storage probe


class ClusterStorageError(ValueError):
    """The storage root (or the grid's data) is not the same place on every node."""


class ClusterResourceError(ValueError):
    """No node of the cluster can ever run one trial of the grid (it would wait forever)."""


def check_resources(
    nodes: list[NodeInfo],
    *,
    cpus_per_trial: float,
    gpus_per_trial: float,
    data_parallel_workers: int = 1,
    existing_cluster: bool = False,
) -> None:
    """Refuse, before anything is queued, a grid whose trial no alive node can run: Ray
    would keep the task pending forever. On an existing cluster an autoscaler may add
    bigger nodes later: $BATCHLAB_ALLOW_PENDING_RESOURCES=1 lets such a grid wait."""
    if existing_cluster and os.environ.get("BATCHLAB_ALLOW_PENDING_RESOURCES", "") in _TRUE:
        return
    most_cpus = max((n.cpus for n in nodes), default=0.0)
    most_gpus = max((n.gpus for n in nodes), default=0.0)
    total_cpus = sum(n.cpus for n in nodes)
    where = "this Ray cluster" if existing_cluster else "the embedded local Ray instance"
    fix = (
        "; connect to a bigger cluster (--address), or start one whose nodes have them"
        if existing_cluster
        else " (--num-cpus sets its CPUs; GPUs are those torch/Ray find on this machine)"
    )
    pending = (
        "; an autoscaler that adds such nodes later: set BATCHLAB_ALLOW_PENDING_RESOURCES=1"
        if existing_cluster
        else ""
    )
    problems = []
    if cpus_per_trial > most_cpus:
        problems.append(
            f"needs {cpus_per_trial:g} CPUs per trial (resources.cpus_per_trial); the largest "
            f"node of {where} has {most_cpus:g}"
        )
    if gpus_per_trial > most_gpus:
        problems.append(
            f"needs {gpus_per_trial:g} GPUs per trial (resources.gpus_per_trial); "
            + (
                f"the largest node of {where} has {most_gpus:g}"
                if most_gpus
                else f"{where} has no GPU (set gpus_per_trial: 0 to train on CPU)"
            )
        )
    if data_parallel_workers > 1 and data_parallel_workers * cpus_per_trial > total_cpus:
        problems.append(
            f"a data-parallel trial needs {data_parallel_workers} workers x {cpus_per_trial:g} "
            f"CPUs; {where} has {total_cpus:g} CPUs in all"
        )
    if problems:
        raise ClusterResourceError(
            "the grid can never start: " + "; ".join(problems) + fix + pending + ". Nothing "
            "was queued."
        )


@dataclass(frozen=True)
class NodeInfo:
    """One alive Ray node, as `ray.nodes()` reports it."""

    node_id: str
    address: str  # the node's IP
    hostname: str
    cpus: float
    gpus: float

    def label(self) -> str:
        return f"node {self.node_id[:8]} ({self.address}, {self.hostname})"


def storage_shared_from_env() -> bool:
    """Whether $BATCHLAB_STORAGE_SHARED declares a local-path root shared by every node."""
    return os.environ.get("BATCHLAB_STORAGE_SHARED", "").strip().lower() in _TRUE


def alive_nodes() -> list[NodeInfo]:
    """The alive nodes of the connected Ray cluster."""
    from scheduler.ray_backend import alive_node_table

    out = []
    for n in alive_node_table():
        res = n.get("Resources", {})
        out.append(
            NodeInfo(
                node_id=n["NodeID"],
                address=n.get("NodeManagerAddress", ""),
                hostname=n.get("NodeManagerHostname", ""),
                cpus=float(res.get("CPU", 0.0)),
                gpus=float(res.get("GPU", 0.0)),
            )
        )
    return out


def trials_leave_driver_node(
    nodes: list[NodeInfo],
    driver_node_id: str | None,
    *,
    cpus_per_trial: float,
    gpus_per_trial: float,
    existing_cluster: bool,
) -> bool:
    """Whether a trial may run on a node other than the driver's: there are other nodes,
    or (on an existing, possibly autoscaling cluster) the driver's node cannot run a trial."""
    if len(nodes) > 1 or driver_node_id is None:
        return True
    if not existing_cluster:
        return False  # the embedded local instance never grows
    here = next((n for n in nodes if n.node_id == driver_node_id), None)
    return here is None or here.cpus < cpus_per_trial or here.gpus < gpus_per_trial


def local_root_refusal(layout: Layout, nodes: list[NodeInfo]) -> str:
    """Why a local-path root is refused on a multi-node cluster, and what to do instead."""
    shown = ", ".join(n.label() for n in nodes[:4]) + (" ..." if len(nodes) > 4 else "")
    return (
        f"storage root {layout.root!r} is a local path, but trials run on other nodes of this "
        f"Ray cluster ({len(nodes)} alive: {shown}; an autoscaler may add more). Each node "
        "would write its trials to its own disk, where the head node (which plans the grid, "
        "skips finished trials and builds batchlab.duckdb) never sees them, and a trial retried "
        "on another node would not find its checkpoints. Use an object store root "
        "(--storage s3://BUCKET/PREFIX or BATCHLAB_STORAGE=s3://..., as deploy/cluster.yaml "
        "does), or a folder mounted at this same path on every node (NFS, EFS, Lustre) and "
        "declare it shared: --storage-shared (scheduler/submit.py) or "
        "BATCHLAB_STORAGE_SHARED=1. See docs/cluster.md."
    )


def check_storage_here(root: str | None) -> Layout:
    """Write, read back and delete a small file under `root` from this process; raises
    `ClusterStorageError` naming the root and the error when that fails."""
    layout = Layout.open(root)
    path = layout.cluster_check_file(f"{uuid.uuid4().hex}-here")
    token = uuid.uuid4().hex.encode()
    try:
        layout.put_bytes(path, token)
        ok = layout.get_bytes(path) == token
        layout.delete(path)
    except Exception as exc:
        raise ClusterStorageError(
            f"storage root {layout.root!r} is not reachable from {socket.gethostname()}: "
            f"{type(exc).__name__}: {one_line(exc)}. For s3:// roots check the credentials "
            "of this machine (an IAM instance profile on a cloud node, AWS_* variables "
            "elsewhere); for a folder check that it is mounted and writable."
        ) from None
    if not ok:
        raise ClusterStorageError(
            f"storage root {layout.root!r}: a file written to {path} read back different "
            "bytes; the storage is not consistent"
        )
    return layout


def probe_nodes(
    layout: Layout,
    nodes: list[NodeInfo],
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> list[str]:
    """Check from every node in `nodes` that it sees the storage root the driver sees.
    Returns the problems, one line per node and cause (empty: all good)."""
    from scheduler.ray_backend import run_on_nodes

    token = uuid.uuid4().hex
    driver_file = layout.cluster_check_file(f"{token}-driver")
    layout.put_bytes(driver_file, token.encode())
    by_id = {n.node_id: n for n in nodes}
    problems: list[str] = []
    try:
        answers, late = run_on_nodes(probe_on_node, (layout.root, token), list(by_id), timeout_s)
        for node_id in late:
            problems.append(
                f"{by_id[node_id].label()}: did not answer the storage check within "
                f"{timeout_s:.0f} s"
            )
        for node_id, answer in answers.items():
            node = by_id[node_id]
            if isinstance(answer, Exception):
                problems.append(f"{node.label()}: the storage check failed: {one_line(answer)}")
                continue
            problems += [f"{node.label()}: {p}" for p in answer["problems"]]
            if answer["wrote"]:
                back = layout.get_bytes(layout.cluster_check_file(f"{token}-{node.node_id}"))
                if back != token.encode():
                    problems.append(
                        f"{node.label()}: the driver does not see the file this node wrote "
                        f"under {layout.root!r}: the node's folder is not the driver's"
                    )
    finally:
        layout.delete(driver_file)
        for n in nodes:
            layout.delete(layout.cluster_check_file(f"{token}-{n.node_id}"))
    return problems


def check_cluster(
    spec: GridSpec,
    layout: Layout,
    *,
    address: str | None = None,
    storage_shared: bool | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
    out: IO[str] | None = None,
) -> Layout:
    """Before a grid's trials run on Ray: refuse a storage root that is not one place for
    every node, probe the root from every node, and return the layout the trials must use
    (a local root becomes absolute: a relative path would resolve differently on each node).

    Does nothing on one node that runs every trial itself (the embedded local instance).
    `address` is where the driver connected (None: embedded, unless $RAY_ADDRESS);
    `storage_shared` None reads $BATCHLAB_STORAGE_SHARED. Raises `ClusterStorageError`."""
    from scheduler.ray_backend import driver_node_id

    out = out or sys.stdout
    nodes = alive_nodes()
    existing = bool(address or os.environ.get("RAY_ADDRESS"))
    here = driver_node_id()  # None: a Ray Client driver runs outside the cluster
    r = spec.resources
    if not trials_leave_driver_node(
        nodes,
        here,
        cpus_per_trial=r.cpus_per_trial,
        gpus_per_trial=r.gpus_per_trial,
        existing_cluster=existing,
    ):
        return layout
    shared = storage_shared_from_env() if storage_shared is None else storage_shared
    if layout.is_local:
        if not shared:
            raise ClusterStorageError(local_root_refusal(layout, nodes))
        layout = Layout.open(layout.base)
    problems = probe_nodes(layout, nodes, timeout_s=timeout_s)
    if problems:
        raise ClusterStorageError(
            f"storage root {layout.root!r} is not the same place on every node of the Ray "
            "cluster:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nEvery node needs the same mount (or, for s3://, credentials: an IAM instance "
            "profile on every node type). See docs/cluster.md."
        )
    kind = "shared folder" if layout.is_local else "object store"
    print(f"storage root {layout.root} ({kind}): checked from all {len(nodes)} nodes", file=out)
    return layout


def probe_on_node(root: str, token: str) -> dict[str, Any]:
    """Runs on one node: read the file the driver wrote, write this node's own."""
    from scheduler.ray_backend import node_id as this_node

    node_id = this_node()
    layout = Layout.open(root)
    problems = []
    path = layout.cluster_check_file(f"{token}-driver")
    try:
        got = layout.get_bytes(path)
    except Exception as exc:
        problems.append(f"cannot read the storage root: {type(exc).__name__}: {one_line(exc)}")
    else:
        if got != token.encode():
            problems.append(
                f"does not see the file the driver wrote ({path}): this node's {root!r} "
                "is not the driver's"
            )
    wrote = False
    try:
        layout.put_bytes(layout.cluster_check_file(f"{token}-{node_id}"), token.encode())
        wrote = True
    except Exception as exc:
        problems.append(f"cannot write to the storage root: {type(exc).__name__}: {one_line(exc)}")
    return {"problems": problems, "wrote": wrote, "host": socket.gethostname()}


def one_line(exc: BaseException) -> str:
    lines = [x for x in str(exc).strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
