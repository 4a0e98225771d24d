"""What an `ElasticJob` asks for: its spec as typed, validated config.

Where it sits: the one source of the resource's spec. kube/crd.py turns these classes
into the CRD's OpenAPI schema (their docstrings become `kubectl explain`), and the
operator parses each object into an `ElasticJobSpec` once (`parse_spec`), so a spec the
schema admits but that cannot run fails here, with a message that says what to change,
before any pod exists. The training settings are `elastiq.config.JobConfig` itself and
the control-plane timing `ControllerConfig` itself, so a field added there appears in
the resource without being written twice.

Names follow what Kubeflow's `ElasticPolicy` users know: `minReplicas`, `maxReplicas`,
`replicas` (the scale subresource's path); a replica is a pod, and each pod runs
`slotsPerPod` workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from elastiq.config import JobConfig
from elastiq.controller.job_state import ControllerConfig
from elastiq.kube import openapi

GROUP = "elastiq.dev"
VERSION = "v1alpha1"
KIND = "ElasticJob"
PLURAL = "elasticjobs"

#: a DNS-1035 label with room for the suffixes the operator adds ("-controller", "-w123")
NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"
_ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_SECRET_NAME = r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$"
_ENDPOINT = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")

#: JobConfig fields the resource does not carry: the job's name is the object's name,
#: and these two write to a worker's local disk, which a pod loses
_JOB_OMITTED = ("job", "step_log", "final_params")
#: ControllerConfig fields the operator derives from the replica counts
_CONTROL_OMITTED = ("min_workers", "max_workers")


@dataclass(kw_only=True, slots=True)
class EnvVar:
    """An environment variable of the training container (Kubernetes' EnvVar)."""

    name: str = field(metadata={"minLength": 1, "pattern": _ENV_NAME})
    """The variable's name."""
    value: str = ""
    """Its value (or set valueFrom)."""
    value_from: dict[str, Any] = field(default_factory=dict)
    """A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...)."""


@dataclass(kw_only=True, slots=True)
class TrainerSpec:
    """The training container: the user's image, next to the elastiq agent sidecar."""

    image: str = field(metadata={"minLength": 1})
    """The training image; it must have elastiq installed (pip install elastiq)."""
    command: list[str] = field(default_factory=list)
    """Entry point; empty: `elastiq worker-host`, which runs this pod's workers for the
    agent sidecar. A custom command must end by exec'ing `elastiq worker-host`."""
    args: list[str] = field(default_factory=list)
    """Arguments to the command."""
    env: list[EnvVar] = field(default_factory=list)
    """Extra environment variables (the elastiq ones are set by the operator)."""
    resources: dict[str, Any] = field(default_factory=dict)
    """Kubernetes ResourceRequirements (requests, limits: cpu, memory, nvidia.com/gpu)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """When the kubelet pulls the image."""


@dataclass(kw_only=True, slots=True)
class StoreSpec:
    """Where the controller keeps membership, plans and leadership."""

    etcd_endpoint: str = ""
    """An etcd v3 client endpoint, host:port. With it the controller runs as 2 replicas
    with a leader lease; empty: one controller with its embedded store (a restarted
    controller rebuilds the job from the agents' re-registrations)."""


@dataclass(kw_only=True, slots=True)
class TokenSecretRef:
    """A Secret holding the job's two tokens (each at least 16 characters)."""

    name: str = field(metadata={"pattern": _SECRET_NAME})
    """The Secret's name, in the job's namespace."""
    agent_key: str = "agent-token"
    """Key of the token agents register with."""
    operator_key: str = "operator-token"
    """Key of the token for status and chaos (the operator's)."""


@dataclass(kw_only=True, slots=True)
class ElasticJobSpec:
    """An elastic training job: workers in pods, each pod with an elastiq agent sidecar;
    the job goes on through the loss of any pod between minReplicas and maxReplicas."""

    trainer: TrainerSpec
    """The training container."""
    replicas: int = field(default=1, metadata={"minimum": 1, "maximum": 10_000})
    """Worker pods to run now (kubectl scale changes it)."""
    min_replicas: int = field(default=1, metadata={"minimum": 1, "maximum": 10_000})
    """Pods needed to start, and below which the job waits for replacements."""
    max_replicas: int = field(metadata={"minimum": 1, "maximum": 10_000})
    """The most pods replicas may be scaled to."""
    spares: int = field(default=0, metadata={"minimum": 0, "maximum": 1_000})
    """Extra pods whose workers wait, warm, to take a lost worker's exact place."""
    slots_per_pod: int = field(default=1, metadata={"minimum": 1, "maximum": 64})
    """Workers per pod (one per GPU)."""
    max_restarts: int = field(default=3, metadata={"minimum": 0, "maximum": 10_000})
    """Times the agent starts a crashed worker again in its pod, as a newcomer, before
    the pod is given up and replaced."""
    job: JobConfig = field(default_factory=JobConfig, metadata={"omit": _JOB_OMITTED})
    """The training: steps, batch, model, data, pipeline stages, ZeRO, checkpoints,
    CheckFree (elastiq's JobConfig; the model's builder is job.modelEntry)."""
    control: ControllerConfig = field(
        default_factory=ControllerConfig, metadata={"omit": _CONTROL_OMITTED}
    )
    """Control-plane timing: leases, heartbeats, settling."""
    store: StoreSpec = field(default_factory=StoreSpec)
    """The controller's store."""
    token_secret: TokenSecretRef | None = None
    """The job's tokens; empty: the operator makes a Secret of fresh random ones."""
    elastiq_image: str = ""
    """Image of the controller and the agent sidecar; empty: the operator's default."""
    controller_port: int = field(default=7070, metadata={"minimum": 1, "maximum": 65535})
    """The controller's gRPC port."""
    metrics_port: int = field(default=9400, metadata={"minimum": 1, "maximum": 65535})
    """The controller's Prometheus port."""

    def __post_init__(self) -> None:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas={self.min_replicas} is above maxReplicas={self.max_replicas}: "
                "raise maxReplicas or lower minReplicas"
            )
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"replicas={self.replicas} must be within minReplicas={self.min_replicas} "
                f"and maxReplicas={self.max_replicas}"
            )
        stages = self.job.pipeline_stages
        if stages > self.max_replicas * self.slots_per_pod:
            raise ValueError(
                f"job.pipelineStages={stages} needs at least {stages} workers, but "
                f"maxReplicas={self.max_replicas} pods of slotsPerPod={self.slots_per_pod} "
                f"give {self.max_replicas * self.slots_per_pod}: raise maxReplicas or "
                "slotsPerPod, or lower job.pipelineStages"
            )
        endpoint = self.store.etcd_endpoint
        if endpoint and not _ENDPOINT.match(endpoint):
            raise ValueError(f"store.etcdEndpoint {endpoint!r} is not host:port")

    @property
    def min_workers(self) -> int:
        return self.min_replicas * self.slots_per_pod

    @property
    def training_workers(self) -> int:
        """Workers that train (0: every ready one, when there are no spares)."""
        return self.replicas * self.slots_per_pod if self.spares else 0

    @property
    def pods(self) -> int:
        """Worker pods the operator keeps running."""
        return self.replicas + self.spares

    @property
    def highly_available(self) -> bool:
        """A standby controller needs a shared store to take over from."""
        return bool(self.store.etcd_endpoint)


def parse_spec(spec: Any) -> ElasticJobSpec:
    """The typed view of a resource's `spec`; ValueError says what is wrong."""
    return openapi.parse(ElasticJobSpec, spec, where="spec")


def check_name(name: str) -> None:
    if not re.match(NAME_PATTERN, name):
        raise ValueError(
            f"ElasticJob name {name!r} must be a DNS-1035 label of at most 40 characters "
            "(lower-case letters, digits and '-', starting with a letter): the operator "
            "names the job's pods and services after it"
        )
