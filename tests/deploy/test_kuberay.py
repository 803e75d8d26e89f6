"""deploy/kuberay/rayjob.yaml against the KubeRay RayJob schema (the subset below), and its
grid against batchlab's own grid parser.

The schema is the part of the `rayjobs.ray.io` CRD (`ray.io/v1`) this file uses, written
from KubeRay's Go types: `ray-operator/apis/ray/v1/rayjob_types.go` (commit 0057210e,
KubeRay 1.3 line: `RayJobSpec`) and `raycluster_types.go` (commit 026f1433, 1.2 line:
`RayClusterSpec`, `HeadGroupSpec`, `WorkerGroupSpec`). A field without `omitempty` in its
json tag is required: `headGroupSpec`; `rayStartParams` and `template` of the head group;
`groupName`, `minReplicas`, `maxReplicas`, `rayStartParams`, `template` of a worker group
(newer KubeRay releases make some of these optional: requiring them satisfies both).
Integers are int32 (`format: int32`), `rayStartParams` a map of strings, `submissionMode`
one of the modes of that release.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

RAYJOB = REPO / "deploy" / "kuberay" / "rayjob.yaml"
INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "image": {"type": "string"},
                            "resources": {
                                "type": "object",
                                "properties": {
                                    "limits": {"type": "object"},
                                    "requests": {"type": "object"},
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}
WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
    "properties": {
        "groupName": {"type": "string"},
        "replicas": INT32,
        "minReplicas": INT32,
        "maxReplicas": INT32,
        "numOfHosts": INT32,
        "rayStartParams": STR_MAP,
        "template": POD_TEMPLATE,
    },
}
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "properties": {
                "activeDeadlineSeconds": INT32,
                "backoffLimit": INT32,
                "entrypoint": {"type": "string"},
                "runtimeEnvYAML": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "ttlSecondsAfterFinished": INT32,
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "suspend": {"type": "boolean"},
                "metadata": STR_MAP,
                "rayClusterSpec": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {
                            "type": "object",
                            "properties": {
                                "idleTimeoutSeconds": INT32,
                                "upscalingMode": {
                                    "enum": ["Default", "Aggressive", "Conservative"]
                                },
                            },
                        },
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["rayStartParams", "template"],
                            "properties": {"rayStartParams": STR_MAP, "template": POD_TEMPLATE},
                        },
                        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(RAYJOB.read_text())}


def test_rayjob_matches_the_crd_schema_subset(docs):
    jsonschema.validate(docs["RayJob"], RAYJOB_SCHEMA)


def test_the_schema_subset_catches_what_the_operator_would_reject(docs):
    import copy

    bad = copy.deepcopy(docs["RayJob"])
    bad["spec"]["ttlSecondsAfterFinished"] = "600"
    del bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    errors = list(jsonschema.Draft7Validator(RAYJOB_SCHEMA).iter_errors(bad))
    assert len(errors) == 2


def test_rayjob_runs_the_configmaps_grid_on_autoscaled_gpu_workers(docs):
    from scheduler.spec import parse_spec

    spec = docs["RayJob"]["spec"]
    assert spec["entrypoint"].startswith("batchlab run /home/ray/grid/grid.yaml --address auto")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == "grid")
    vol = next(v for v in head["volumes"] if v["name"] == "grid")
    assert mount["mountPath"] == "/home/ray/grid"
    cm = docs["ConfigMap"]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    grid = parse_spec(yaml.safe_load(cm["data"]["grid.yaml"]))
    (gpu,) = cluster["workerGroupSpecs"]
    res = gpu["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    assert grid.resources.gpus_per_trial <= int(res["limits"]["nvidia.com/gpu"])
    import ray

    assert cluster["rayVersion"] == ray.__version__  # the image's Ray = the driver's


def test_every_value_to_change_is_marked():
    for n, line in enumerate(RAYJOB.read_text().splitlines(), 1):
        if "CHANGE-ME" in line and not line.lstrip().startswith("#"):
            assert "# CHANGE:" in line, f"line {n}: {line}"


def test_the_docs_show_the_kubectl_commands():
    text = (REPO / "docs" / "cluster.md").read_text()
    assert "kubectl apply -f deploy/kuberay/rayjob.yaml" in text
    assert "sbatch" in text and "deploy/slurm/batchlab.sbatch" in text
    assert Path(RAYJOB).exists()
