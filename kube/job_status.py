"""What an `ElasticJob` reports: its status as typed data, and the conditions rule.

Where it sits: the one source of the resource's status schema (kube/crd.py generates
it from these classes) and what the operator writes, built from the controller's
`Status` reply and the pods it sees (kube/status_mirror.py). Conditions follow the
Kubernetes API conventions: one entry per type, `lastTransitionTime` moves only when
the status changes, and `observedGeneration` says which spec they judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Phase = Literal["Pending", "Running", "Recovering", "Succeeded", "Failed"]
TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed"})

#: condition types, Kubeflow's: Created, Running, Restarting (here Recovering), Succeeded,
#: Failed
CONDITION_TYPES = ("Created", "Running", "Recovering", "Succeeded", "Failed")


@dataclass(kw_only=True, slots=True)
class Condition:
    """One aspect of the job's state (metav1.Condition)."""

    type: Literal["Created", "Running", "Recovering", "Succeeded", "Failed"]
    """Created, Running, Recovering, Succeeded or Failed."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = ""
    """One CamelCase word for machines."""
    message: str = ""
    """What happened and, for a failure, what to change."""
    last_transition_time: str = ""
    """When status last changed (RFC 3339)."""
    observed_generation: int = 0
    """The metadata.generation of the spec this judges."""


@dataclass(kw_only=True, slots=True)
class RecoveryStatus:
    """The newest recovery from a lost worker."""

    generation: int = 0
    """The generation it produced."""
    cause: str = ""
    """What was lost (pod deleted, worker exited, lease expired, ...)."""
    mttr_seconds: float = 0.0
    """From the failure to the first step of the new generation."""
    lost_steps: int = 0
    """Committed steps that had to be redone (0 when restored from peers)."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per recovery phase (detect, plan, rebuild, restore, first step)."""


@dataclass(kw_only=True, slots=True)
class CheckpointStatus:
    """The newest checkpoint committed under job.checkpointUrl."""

    step: int = 0
    """Its step."""
    url: str = ""
    """The checkpoint root it is under."""


@dataclass(kw_only=True, slots=True)
class ElasticJobStatus:
    """Observed state, written by the operator."""

    phase: Phase = "Pending"
    """Pending, Running, Recovering, Succeeded or Failed."""
    message: str = ""
    """The latest thing a person should know."""
    observed_generation: int = 0
    """The metadata.generation the operator last acted on."""
    generation: int = 0
    """The training's membership generation (one per reconfiguration)."""
    members: int = 0
    """Workers training in the current generation."""
    replicas: int = 0
    """Worker pods that are up (the scale subresource's status)."""
    selector: str = ""
    """Label selector of the worker pods (the scale subresource's)."""
    step: int = 0
    """Newest committed step."""
    total_steps: int = 0
    """Steps the job runs."""
    loss: float = 0.0
    """Loss at the newest step."""
    failures: int = 0
    """Workers lost so far."""
    last_recovery: RecoveryStatus | None = None
    """The newest recovery."""
    last_checkpoint: CheckpointStatus | None = None
    """The newest committed checkpoint."""
    pods_created: int = 0
    """Worker pods created so far: the next pod's number, so names never repeat."""
    controller: str = ""
    """The controller's address (host:port)."""
    conditions: list[Condition] = field(default_factory=list)
    """Created, Running, Recovering, Succeeded, Failed."""


def set_condition(
    conditions: list[Condition],
    kind: Literal["Created", "Running", "Recovering", "Succeeded", "Failed"],
    status: bool,
    reason: str,
    message: str,
    *,
    now: str,
    observed_generation: int,
) -> list[Condition]:
    """The conditions with `kind` set; its transition time moves only on a change."""
    value: Literal["True", "False"] = "True" if status else "False"
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.type != kind:
            out.append(c)
            continue
        found = True
        changed = c.status != value
        out.append(
            replace(
                c,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=now if changed else c.last_transition_time,
                observed_generation=observed_generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=kind,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=observed_generation,
            )
        )
    return out
