"""The Kubernetes objects an `ElasticJob` is made of, as pure functions of its spec.

Where it sits: the operator (kube/operator.py) creates what these return; tests check
them against the Kubernetes schemas offline. Nothing here talks to an API server.

Per job `x` in namespace `ns`:
- Secret `x-tokens` (unless the spec names one): the agent and operator tokens, read by
  containers through `secretKeyRef` env vars, never argv (docs/security.md);
- ConfigMap `x-job`: the training's JobConfig as JSON, mounted into the controller;
- Deployment + Service `x-controller`: the controller, 1 replica with its embedded store
  (Recreate: never two at once), or 2 with a leader lease on etcd;
- Pods `x-w<N>`: one per replica, N counting up so a name is never reused. Each pod runs
  the user's training container and the elastiq agent as a native sidecar (an init
  container with `restartPolicy: Always`). The two share only an in-memory emptyDir
  holding the agent's Unix socket; the training container's `elastiq worker-host`
  connects there and runs the workers the agent asks for (agent/worker_host.py).
  No `shareProcessNamespace`: it would show each container's environment (the agent
  token) and files to the other, and the socket already lets the agent stop a worker.
Every object carries an ownerReference to the job, so deleting the job deletes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from elastiq import envvars
from elastiq.config_fields import flag_name
from elastiq.controller.job_state import ControllerConfig
from elastiq.kube.job_spec import GROUP, KIND, VERSION, ElasticJobSpec

#: where the agent's socket lives, in both containers (an emptyDir)
SOCKET_DIR = "/run/elastiq"
SOCKET_PATH = f"{SOCKET_DIR}/agent.sock"
JOB_CONFIG_DIR = "/etc/elastiq/job"
JOB_CONFIG_FILE = "job.json"

LABEL_JOB = f"{GROUP}/job"
LABEL_ROLE = f"{GROUP}/role"
ROLE_WORKER = "worker"
ROLE_CONTROLLER = "controller"
AGENT_CONTAINER = "elastiq-agent"
TRAINER_CONTAINER = "trainer"
AGENT_TOKEN_KEY = "agent-token"
OPERATOR_TOKEN_KEY = "operator-token"

#: after the job ends the controller keeps serving Status this long, so the operator
#: reads the final state; the operator removes it once that is mirrored
CONTROLLER_LINGER_S = 3600

_DROP_ALL = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


@dataclass(frozen=True, slots=True)
class JobRef:
    """The job an object belongs to: what every builder needs besides the spec."""

    name: str
    namespace: str
    uid: str
    spec: ElasticJobSpec
    image: str
    """The elastiq image (spec.elastiqImage, else the operator's default)."""
    controller_host: str
    """How agents and the operator reach the controller's Service."""

    @property
    def controller_name(self) -> str:
        return f"{self.name}-controller"

    @property
    def controller_address(self) -> str:
        return f"{self.controller_host}:{self.spec.controller_port}"

    @property
    def tokens_secret(self) -> str:
        ref = self.spec.token_secret
        return ref.name if ref is not None else f"{self.name}-tokens"

    @property
    def agent_token_key(self) -> str:
        ref = self.spec.token_secret
        return ref.agent_key if ref is not None else AGENT_TOKEN_KEY

    @property
    def operator_token_key(self) -> str:
        ref = self.spec.token_secret
        return ref.operator_key if ref is not None else OPERATOR_TOKEN_KEY

    @property
    def config_map(self) -> str:
        return f"{self.name}-job"


def controller_host(name: str, namespace: str, host_format: str) -> str:
    """The controller Service's host for `host_format` ("{service}.{namespace}.svc")."""
    return host_format.format(service=f"{name}-controller", namespace=namespace)


def labels(job: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "elastiq",
        "app.kubernetes.io/instance": job,
        "app.kubernetes.io/managed-by": "elastiq-operator",
        LABEL_JOB: job,
        LABEL_ROLE: role,
    }


def worker_selector(job: str) -> str:
    return f"{LABEL_JOB}={job},{LABEL_ROLE}={ROLE_WORKER}"


def owner_reference(ref: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(ref: JobRef, name: str, role: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": labels(ref.name, role),
        "ownerReferences": [owner_reference(ref)],
    }


def _secret_env(name: str, ref: JobRef, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.tokens_secret, "key": key}}}


def token_secret(ref: JobRef, agent_token: str, operator_token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(ref, ref.tokens_secret, ROLE_CONTROLLER),
        "type": "Opaque",
        "stringData": {AGENT_TOKEN_KEY: agent_token, OPERATOR_TOKEN_KEY: operator_token},
    }


def job_config_map(ref: JobRef) -> dict[str, Any]:
    job = dataclasses.replace(ref.spec.job, job=ref.name)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ref, ref.config_map, ROLE_CONTROLLER),
        "data": {JOB_CONFIG_FILE: job.to_json()},
    }


def controller_args(ref: JobRef) -> list[str]:
    spec = ref.spec
    control = dataclasses.replace(
        spec.control, min_workers=spec.min_workers, max_workers=spec.training_workers
    )
    args = [
        "controller",
        "--job-config",
        f"{JOB_CONFIG_DIR}/{JOB_CONFIG_FILE}",
        "--host",
        "0.0.0.0",
        "--advertise-host",
        "$(POD_IP)",
        "--port",
        str(spec.controller_port),
        "--metrics-port",
        str(spec.metrics_port),
        "--metrics-host",
        "0.0.0.0",
        "--store",
        f"etcd://{spec.store.etcd_endpoint}" if spec.highly_available else "embedded",
        "--linger",
        str(CONTROLLER_LINGER_S),
    ]
    for f in dataclasses.fields(ControllerConfig):
        args += [flag_name(f.name), str(getattr(control, f.name))]
    return args


def controller_deployment(ref: JobRef) -> dict[str, Any]:
    spec = ref.spec
    match = {LABEL_JOB: ref.name, LABEL_ROLE: ROLE_CONTROLLER}
    container = {
        "name": "controller",
        "image": ref.image,
        "command": ["elastiq"],
        "args": controller_args(ref),
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            _secret_env(envvars.AGENT_TOKEN, ref, ref.agent_token_key),
            _secret_env(envvars.OPERATOR_TOKEN, ref, ref.operator_token_key),
        ],
        "ports": [
            {"name": "grpc", "containerPort": spec.controller_port},
            {"name": "metrics", "containerPort": spec.metrics_port},
        ],
        "volumeMounts": [{"name": "job", "mountPath": JOB_CONFIG_DIR, "readOnly": True}],
        "securityContext": {**_DROP_ALL, "readOnlyRootFilesystem": True},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ref, ref.controller_name, ROLE_CONTROLLER),
        "spec": {
            "replicas": 2 if spec.highly_available else 1,
            # the embedded store lives in the one controller: never run two
            "strategy": {"type": "RollingUpdate" if spec.highly_available else "Recreate"},
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": labels(ref.name, ROLE_CONTROLLER)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [container],
                    "volumes": [{"name": "job", "configMap": {"name": ref.config_map}}],
                },
            },
        },
    }


def controller_service(ref: JobRef) -> dict[str, Any]:
    spec = ref.spec
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ref, ref.controller_name, ROLE_CONTROLLER),
        "spec": {
            "selector": {LABEL_JOB: ref.name, LABEL_ROLE: ROLE_CONTROLLER},
            "ports": [
                {"name": "grpc", "port": spec.controller_port, "targetPort": "grpc"},
                {"name": "metrics", "port": spec.metrics_port, "targetPort": "metrics"},
            ],
        },
    }


def worker_pod_name(job: str, number: int) -> str:
    return f"{job}-w{number}"


def worker_pod(ref: JobRef, number: int) -> dict[str, Any]:
    spec = ref.spec
    trainer = spec.trainer
    run_mount = {"name": "elastiq-run", "mountPath": SOCKET_DIR}
    agent = {
        "name": AGENT_CONTAINER,
        "image": ref.image,
        # a native sidecar: starts before the trainer, restarted if it exits, and does
        # not keep the pod alive once the trainer has finished
        "restartPolicy": "Always",
        "command": ["elastiq"],
        "args": [
            "agent",
            "--slots",
            str(spec.slots_per_pod),
            "--max-restarts",
            str(spec.max_restarts),
            "--worker-socket",
            SOCKET_PATH,
        ],
        "env": [
            {"name": envvars.CONTROLLER, "value": ref.controller_address},
            {"name": envvars.NODE_ID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            _secret_env(envvars.AGENT_TOKEN, ref, ref.agent_token_key),
        ],
        "volumeMounts": [run_mount],
        # the trainer starts once the agent's socket is there
        "startupProbe": {
            "exec": {"command": ["test", "-S", SOCKET_PATH]},
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "securityContext": {**_DROP_ALL, "readOnlyRootFilesystem": True},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    env: list[dict[str, Any]] = [{"name": envvars.AGENT_SOCKET, "value": SOCKET_PATH}]
    for var in trainer.env:
        item: dict[str, Any] = {"name": var.name}
        if var.value_from:
            item["valueFrom"] = var.value_from
        else:
            item["value"] = var.value
        env.append(item)
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": trainer.image,
        "imagePullPolicy": trainer.image_pull_policy,
        "command": trainer.command or ["elastiq", "worker-host"],
        "env": env,
        "volumeMounts": [run_mount],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if trainer.args:
        container["args"] = trainer.args
    if trainer.resources:
        container["resources"] = trainer.resources
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(ref, worker_pod_name(ref.name, number), ROLE_WORKER),
        "spec": {
            # a failed pod is replaced by a new one (a newcomer), never restarted in place
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 30,
            "initContainers": [agent],
            "containers": [container],
            "volumes": [
                {"name": "elastiq-run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}
            ],
        },
    }
