"""The operator against kmock's Kubernetes emulator (no kube-apiserver can run here; see
tests/kube_cluster.py for what stands in and what is real)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from elastiq.kube.job_runner import OperatorConfig
from tests.kube_cluster import (
    EmulatedCluster,
    LocalKubelet,
    OperatorThread,
    free_port,
    wait_until,
)

NS = "ml"


def job(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "replicas": 4,
        "minReplicas": 2,
        "maxReplicas": 8,
        "trainer": {"image": "elastiq:test"},
        "controllerPort": free_port(),
        "metricsPort": free_port(),
        "control": {"settleS": 0.5},
        "job": {
            "steps": 400,
            "globalBatch": 24,
            "microBatch": 2,
            "seqLen": 32,
            "stepDelayS": 0.05,
            "model": {"dim": 32, "nLayers": 2, "nHeads": 2},
        },
    }
    body.update(spec)
    return {
        "apiVersion": "elastiq.dev/v1alpha1",
        "kind": "ElasticJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as c:
        yield c


def _operator(cluster: EmulatedCluster) -> OperatorThread:
    return OperatorThread(
        OperatorConfig(
            image="elastiq:test",
            api_server=cluster.url,
            controller_host_format="127.0.0.1",  # no cluster DNS here
            poll_interval_s=0.5,
            namespaces=[NS],
        )
    )


def _status(cluster: EmulatedCluster, name: str) -> dict[str, Any]:
    obj = cluster.get("ElasticJob", NS, name) or {}
    status: dict[str, Any] = obj.get("status") or {}
    return status


def _pods(cluster: EmulatedCluster, name: str) -> list[str]:
    return sorted(
        p["metadata"]["name"]
        for p in cluster.list("Pod", NS)
        if p["metadata"]["name"].startswith(f"{name}-w")
    )


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def test_a_spec_that_cannot_run_fails_with_what_to_change_and_makes_no_pods(
    cluster: EmulatedCluster,
) -> None:
    bad = job("deep", maxReplicas=2, replicas=2, job={"pipelineStages": 3})
    cluster.create(bad)
    with _operator(cluster):
        status = wait_until(
            "the Failed condition",
            lambda: (s := _status(cluster, "deep")).get("phase") == "Failed" and s,
            30,
        )
        failed = _condition(status, "Failed")
        assert failed["status"] == "True" and failed["reason"] == "InvalidSpec"
        assert "raise maxReplicas or slotsPerPod, or lower job.pipelineStages" in failed["message"]
        assert _pods(cluster, "deep") == []
        assert cluster.get("Deployment", NS, "deep-controller") is None
        # fixing the spec brings the job to life
        cluster.patch("ElasticJob", NS, "deep", {"spec": {"job": {"pipelineStages": 2}}})
        wait_until("pods for the fixed job", lambda: len(_pods(cluster, "deep")) == 2, 30)
        assert _status(cluster, "deep")["phase"] == "Pending"


def test_a_restarted_operator_creates_nothing_twice_and_deleting_the_job_deletes_all(
    cluster: EmulatedCluster,
) -> None:
    cluster.create(job("idem"))
    with _operator(cluster):
        wait_until("4 pods", lambda: len(_pods(cluster, "idem")) == 4, 30)
        wait_until("the status", lambda: _status(cluster, "idem").get("podsCreated") == 4, 30)
    first = _pods(cluster, "idem")
    with _operator(cluster):  # a new operator process picks the job up where it stands
        wait_until(
            "a round of the new operator",
            lambda: _status(cluster, "idem").get("observedGeneration") == 1,
            30,
        )
        assert _pods(cluster, "idem") == first == [f"idem-w{i}" for i in range(4)]
        deployments = [d["metadata"]["name"] for d in cluster.list("Deployment", NS)]
        assert deployments == ["idem-controller"]
        secret = cluster.get("Secret", NS, "idem-tokens")
        assert (
            secret is not None and secret["metadata"]["ownerReferences"][0]["kind"] == "ElasticJob"
        )
        cluster.delete("ElasticJob", NS, "idem")
        wait_until("the job gone", lambda: cluster.get("ElasticJob", NS, "idem") is None, 30)
        wait_until("its pods gone", lambda: _pods(cluster, "idem") == [], 30)
        assert cluster.list("Deployment", NS) == []
        assert cluster.get("Secret", NS, "idem-tokens") is None


@pytest.mark.slow
def test_an_elastic_job_recovers_a_deleted_pod_in_place_and_scales_4_6_3(
    cluster: EmulatedCluster, tmp_path: os.PathLike[str]
) -> None:
    cluster.create(job("lm"))
    with LocalKubelet(cluster, NS, str(tmp_path)), _operator(cluster):
        running = wait_until(
            "4 members training",
            lambda: (
                (s := _status(cluster, "lm")).get("members") == 4 and s.get("step", 0) >= 5 and s
            ),
            180,
        )
        assert running["phase"] == "Running"
        cluster.delete("Pod", NS, "lm-w1")
        recovered = wait_until(
            "a recovery",
            lambda: (s := _status(cluster, "lm")).get("lastRecovery") and s,
            90,
        )
        assert recovered["lastRecovery"]["lostSteps"] == 0
        wait_until("the replacement pod", lambda: "lm-w4" in _pods(cluster, "lm"), 30)
        wait_until("4 members again", lambda: _status(cluster, "lm").get("members") == 4, 120)
        cluster.patch("ElasticJob", NS, "lm", {"spec": {"replicas": 6}})
        wait_until("6 members", lambda: _status(cluster, "lm").get("members") == 6, 180)
        cluster.patch("ElasticJob", NS, "lm", {"spec": {"replicas": 3}})
        wait_until(
            "3 members",
            lambda: (s := _status(cluster, "lm")).get("members") == 3 and s.get("replicas") == 3,
            120,
        )
        end = wait_until(
            "the job to end",
            lambda: (s := _status(cluster, "lm")).get("phase") in ("Succeeded", "Failed") and s,
            300,
        )
        assert end["phase"] == "Succeeded", end
        assert end["step"] == 400 and end["lastRecovery"]["mttrSeconds"] > 0
        assert _condition(end, "Succeeded")["status"] == "True"
        reasons = {e["reason"] for e in cluster.list("Event", NS)}
        assert {
            "Creating",
            "PodReplaced",
            "Recovered",
            "ScaledUp",
            "ScaledDown",
            "Succeeded",
        } <= reasons
        wait_until(
            "the controller removed",
            lambda: cluster.get("Deployment", NS, "lm-controller") is None,
            30,
        )


def _schedule(cluster: EmulatedCluster, name: str, node: str) -> None:
    """What a scheduler and kubelet would write: the pod's node, and Running."""
    cluster.patch("Pod", NS, name, {"spec": {"nodeName": node}})
    cluster.request(
        "PATCH", cluster.path("Pod", NS, name) + "/status", {"status": {"phase": "Running"}}
    )


def test_chaos_deletes_evicts_and_kills_a_nodes_pods_and_the_operator_replaces_them(
    cluster: EmulatedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    from elastiq.cli.main import main

    cluster.create(job("ch"))
    with _operator(cluster):
        wait_until("4 pods", lambda: len(_pods(cluster, "ch")) == 4, 30)
        for i, node in enumerate(["n0", "n0", "n1", "n2"]):
            _schedule(cluster, f"ch-w{i}", node)
        base = ["chaos", "--job", "ch"]
        where = ["--namespace", NS, "--api-server", cluster.url]
        assert main([*base, "delete-pod", *where, "--pod", "ch-nope"]) == 2
        assert "not a running worker pod of job ch" in capsys.readouterr().err
        assert _pods(cluster, "ch") == ["ch-w0", "ch-w1", "ch-w2", "ch-w3"]
        assert main([*base, "kill-node-pods", *where, "--node", "n0"]) == 0
        assert "ch-w0, ch-w1" in capsys.readouterr().out
        assert main([*base, "delete-pod", *where, "--pod", "ch-w2", "--grace", "0"]) == 0
        assert main([*base, "evict-pod", *where]) == 0
        assert "ch-w3" in capsys.readouterr().out  # the only running one left
        replaced = wait_until(
            "4 replacements",
            lambda: (p := _pods(cluster, "ch")) == [f"ch-w{i}" for i in range(4, 8)] and p,
            30,
        )
        assert len(replaced) == 4
        reasons = [e["reason"] for e in cluster.list("Event", NS)]
        assert "PodReplaced" in reasons
