"""deploy/ and the objects the operator builds, checked offline: against the Kubernetes
schemas (kubernetes-validate, strict), the CRD's own schema (jsonschema), and kubectl's
kustomize. No API server runs here, so CEL rules are checked through the spec's own
validation, which mirrors them (kube/crd.py SPEC_RULES)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from elastiq.config import JobConfig
from elastiq.kube import crd, openapi, resources
from elastiq.kube.job_spec import ElasticJobSpec, parse_spec

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "examples" / "elasticjob.yaml"
K8S_VERSION = "1.33.0"  # native sidecars are on by default from 1.29, GA in 1.33


def _docs(path: pathlib.Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _example() -> dict[str, Any]:
    (doc,) = _docs(EXAMPLE)
    return doc


def _schema() -> dict[str, Any]:
    return crd.custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _ref(spec: ElasticJobSpec) -> resources.JobRef:
    return resources.JobRef(
        name="tiny-lm",
        namespace="ml",
        uid="0b7c7c4e-4a51-4c53-9f3b-1f6f1b2f9b10",
        spec=spec,
        image="elastiq:0.1.0",
        controller_host=resources.controller_host("tiny-lm", "ml", "{service}.{namespace}.svc"),
    )


def test_deploy_crd_is_generated_from_the_typed_spec() -> None:
    assert (DEPLOY / "crd.yaml").read_text(encoding="utf-8") == crd.render(), (
        "deploy/crd.yaml is stale: python -m elastiq.kube.crd > deploy/crd.yaml"
    )


def test_every_deploy_manifest_passes_the_kubernetes_schemas() -> None:
    kinds = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _docs(path):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        [
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
        ]
    )


def test_the_objects_the_operator_builds_pass_the_kubernetes_schemas() -> None:
    spec = parse_spec(_example()["spec"])
    ref = _ref(spec)
    for obj in (
        resources.token_secret(ref, "a" * 32, "b" * 32),
        resources.job_config_map(ref),
        resources.controller_deployment(ref),
        resources.controller_service(ref),
        resources.worker_pod(ref, 7),
    ):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_example_passes_the_crds_schema_and_parses() -> None:
    example = _example()
    jsonschema.validate(example, _schema())
    spec = parse_spec(example["spec"])
    assert spec.pods == 4 and spec.min_workers == 2 and spec.job.zero == 1


@pytest.mark.parametrize(
    ("path", "value", "what"),
    [
        (("replicas",), "four", "'four' is not of type 'integer'"),
        (("replicas",), 0, "less than the minimum of 1"),
        (("slotsPerPod",), 65, "greater than the maximum of 64"),
        (("job", "steps"), 1.5, "is not of type 'integer'"),
        (("trainer", "imagePullPolicy"), "Sometimes", "is not one of"),
        (("trainer",), None, "is not of type 'object'"),
    ],
)
def test_the_crd_schema_rejects_bad_types_and_bounds(
    path: tuple[str, ...], value: object, what: str
) -> None:
    example = copy.deepcopy(_example())
    node = example["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=what):
        jsonschema.validate(example, _schema())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"minReplicas": 9}, "minReplicas=9 is above maxReplicas=8"),
        ({"replicas": 9}, "replicas=9 must be within minReplicas=2 and maxReplicas=8"),
        (
            {"maxReplicas": 4, "job": {"pipelineStages": 5}},
            "job.pipelineStages=5 needs at least 5 workers, but maxReplicas=4",
        ),
        ({"job": {"pipelineStages": 7}}, r"pipeline_stages=7 must be in 1..6 \(one per layer"),
        ({"job": {"globalBatch": 30}}, "global_batch"),
        ({"store": {"etcdEndpoint": "etcd"}}, "is not host:port"),
        ({"replica": 3}, "unknown field"),
    ],
)
def test_a_spec_that_cannot_run_is_refused_with_what_to_change(
    change: dict[str, Any], message: str
) -> None:
    spec = copy.deepcopy(_example()["spec"])
    for key, value in change.items():
        if isinstance(value, dict):
            spec.setdefault(key, {}).update(value)
        else:
            spec[key] = value
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_the_cel_rules_mirror_the_specs_own_checks() -> None:
    rules = " ".join(rule for rule, _ in crd.SPEC_RULES)
    for field in ("minReplicas", "maxReplicas", "replicas"):
        assert f"self.{field}" in rules


def test_job_config_round_trips_through_the_resource() -> None:
    job = JobConfig(steps=77, global_batch=48, micro_batch=4, pipeline_stages=2, zero=2)
    job.model_args["hidden"] = 128
    data = openapi.dump(job, skip=frozenset({"job", "step_log", "final_params"}))
    assert "step_log" not in json.dumps(data) and data["globalBatch"] == 48
    back = openapi.parse(
        JobConfig, data, where="spec.job", skip=frozenset({"job", "step_log", "final_params"})
    )
    assert back == job


def test_worker_pods_run_the_agent_as_a_native_sidecar_without_shared_processes() -> None:
    spec = parse_spec(_example()["spec"])
    pod = resources.worker_pod(_ref(spec), 3)
    assert pod["metadata"]["name"] == "tiny-lm-w3"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == _ref(spec).uid
    body = pod["spec"]
    assert "shareProcessNamespace" not in body
    (agent,) = body["initContainers"]
    (trainer,) = body["containers"]
    assert agent["restartPolicy"] == "Always"
    assert trainer["command"] == ["elastiq", "worker-host"]
    assert body["restartPolicy"] == "Never"
    # tokens reach containers only through secretKeyRef; the trainer holds none
    text = json.dumps(pod)
    assert "token" not in json.dumps(trainer).lower()
    assert all("valueFrom" in e for e in agent["env"] if "TOKEN" in e["name"])
    assert "--token" not in text


def test_the_controller_runs_one_replica_on_the_embedded_store_and_two_on_etcd() -> None:
    spec = parse_spec(_example()["spec"])
    one = resources.controller_deployment(_ref(spec))
    assert one["spec"]["replicas"] == 1 and one["spec"]["strategy"]["type"] == "Recreate"
    ha_spec = dataclasses.replace(
        spec, store=dataclasses.replace(spec.store, etcd_endpoint="e:2379")
    )
    two = resources.controller_deployment(_ref(ha_spec))
    assert two["spec"]["replicas"] == 2
    args = two["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--store") + 1] == "etcd://e:2379"
    assert args[args.index("--min-workers") + 1] == "2"


def test_the_controllers_flags_are_ones_it_accepts() -> None:
    from elastiq.cli.main import build_parser

    spec = parse_spec(_example()["spec"])
    args = resources.controller_args(_ref(spec))
    args = [a.replace("$(POD_IP)", "10.0.0.1") for a in args]
    parsed = build_parser().parse_args(args)
    assert parsed.job_config.endswith("job.json") and parsed.linger_s == 3600


def test_kubectl_kustomize_renders_deploy() -> None:
    assert shutil.which("kubectl"), "kubectl is missing: bash dev.sh test installs it"
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds and len(kinds) == 6
