"""Chaos on Kubernetes: pod-level faults against a job named by its `ElasticJob`.

Where it sits: `elastiq chaos delete-pod | evict-pod | kill-node-pods` (elastiq/cli)
call `inject`; it talks to the API server with the caller's own credentials (the
kubeconfig, or in-cluster), through the operator's client adapter (kube/api.py). These
are the faults a cluster deals out: a pod deleted (someone's `kubectl delete`, a
preemption), a pod evicted (a node drain; PodDisruptionBudgets apply), and a node lost
(every pod of the job on one node killed at once, grace 0, as a dead kubelet's pods
are). The job's controller sees each as lost workers; the operator replaces the pods.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Literal

from elastiq.kube.api import ApiEndpoint, KubeApi
from elastiq.kube.reconcile import pod_view
from elastiq.kube.resources import worker_selector

PodFault = Literal["delete-pod", "evict-pod", "kill-node-pods"]


@dataclass(kw_only=True, slots=True)
class PodFaultOrder:
    """Which pods of which job, and how."""

    fault: PodFault
    job: str
    """The ElasticJob's name."""
    namespace: str = "default"
    """Its namespace."""
    pod: str = ""
    """delete-pod, evict-pod: the pod (empty: one of the job's running worker pods, at
    random)."""
    node: str = ""
    """kill-node-pods: the Kubernetes node whose pods of this job are killed."""
    grace_s: int | None = None
    """delete-pod: termination grace period (0: SIGKILL at once; None: the pod's own)."""
    seed: int | None = None
    """Seed of the random choice of pod."""
    api_server: str = ""
    """The API server's URL (empty: in the cluster, else the kubeconfig)."""

    def __post_init__(self) -> None:
        if self.fault == "kill-node-pods" and not self.node:
            raise ValueError("kill-node-pods needs --node (a Kubernetes node name)")
        if self.grace_s is not None and self.grace_s < 0:
            raise ValueError(f"--grace={self.grace_s} must be >= 0")


async def _inject(order: PodFaultOrder) -> list[str]:
    api = KubeApi(ApiEndpoint(server=order.api_server))
    try:
        listed = await api.list_pods(order.namespace, worker_selector(order.job))
        running = [
            p
            for p in listed
            if (view := pod_view(p, order.job)) is not None and view.up and view.phase == "Running"
        ]
        if order.fault == "kill-node-pods":
            targets = [
                p["metadata"]["name"] for p in running if p["spec"].get("nodeName") == order.node
            ]
            if not targets:
                raise ValueError(
                    f"job {order.job} has no running pod on node {order.node!r} in "
                    f"namespace {order.namespace}"
                )
            for name in targets:
                await api.delete("Pod", order.namespace, name, grace_s=0)
            return targets
        names = sorted(p["metadata"]["name"] for p in running)
        if order.pod:
            if order.pod not in names:
                raise ValueError(
                    f"{order.pod!r} is not a running worker pod of job {order.job} in "
                    f"namespace {order.namespace} (running: {', '.join(names) or 'none'})"
                )
            target = order.pod
        elif names:
            target = random.Random(order.seed).choice(names)
        else:
            raise ValueError(
                f"job {order.job} has no running worker pod in namespace {order.namespace}"
            )
        if order.fault == "evict-pod":
            await api.evict_pod(order.namespace, target)
        else:
            await api.delete("Pod", order.namespace, target, grace_s=order.grace_s)
        return [target]
    finally:
        api.close()


def inject(order: PodFaultOrder) -> list[str]:
    """Deal the fault; the pods it hit. ValueError, changing nothing, when there is no
    such job, pod or node."""
    return asyncio.run(_inject(order))
