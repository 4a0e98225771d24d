"""One reconciliation of an `ElasticJob`, as a pure function: what the operator sees ->
what it does.

Where it sits: kube/operator.py gathers the inputs (the job's worker pods, the
controller's `Status` reply if it answered, the status written last time) and applies
the `Actions` this returns: pods to create and delete, the new status, Kubernetes
Events, and whether the controller can go. Nothing here does I/O, so every rule is
tested in microseconds (tests/test_kube_reconcile.py), and an operator restarted at any
moment decides from what it sees, never from memory: pod names come from the counter
in the status, so nothing is created twice.

Rules:
- a job keeps `spec.replicas + spec.spares` worker pods up. A pod that failed or was
  evicted is deleted and replaced by a new one (a newcomer with a new name); a deleted
  pod is simply replaced. Scaling down deletes the newest pods first.
- the job's phase is the controller's (Pending, Running, Recovering); it ends when the
  controller says Succeeded or Failed, and then nothing more is created.
- each new recovery the controller reports becomes an Event with its MTTR and lost
  steps; each replaced pod an Event naming why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from elastiq.kube import openapi
from elastiq.kube.job_status import (
    TERMINAL,
    CheckpointStatus,
    ElasticJobStatus,
    Phase,
    RecoveryStatus,
    set_condition,
)
from elastiq.kube.resources import JobRef, worker_pod_name, worker_selector
from elastiq.proto import elastiq_pb2 as pb

_PHASES: dict[int, Phase] = {
    pb.JOB_PENDING: "Pending",
    pb.JOB_RUNNING: "Running",
    pb.JOB_RECOVERING: "Recovering",
    pb.JOB_SUCCEEDED: "Succeeded",
    pb.JOB_FAILED: "Failed",
}


@dataclass(frozen=True, slots=True)
class KubeEvent:
    """A Kubernetes Event on the job."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(slots=True)
class Actions:
    create: list[int] = field(default_factory=list)
    """Numbers of the worker pods to create (names from resources.worker_pod_name)."""
    delete: list[str] = field(default_factory=list)
    """Worker pods to delete."""
    status: ElasticJobStatus = field(default_factory=ElasticJobStatus)
    events: list[KubeEvent] = field(default_factory=list)
    remove_controller: bool = False
    """The job is over and its final state is in the status: the controller can go."""


@dataclass(frozen=True, slots=True)
class PodView:
    """What the reconciler reads of a worker pod."""

    name: str
    number: int
    phase: str
    terminating: bool
    reason: str

    @property
    def up(self) -> bool:
        return not self.terminating and self.phase in ("", "Pending", "Running")


def pod_view(pod: dict[str, Any], job: str) -> PodView | None:
    """A worker pod of `job`, or None for anything not named like one."""
    meta = pod.get("metadata") or {}
    name = str(meta.get("name", ""))
    prefix = f"{job}-w"
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
        return None
    status = pod.get("status") or {}
    reason = str(status.get("reason") or status.get("message") or "")
    return PodView(
        name=name,
        number=int(name[len(prefix) :]),
        phase=str(status.get("phase") or ""),
        terminating=bool(meta.get("deletionTimestamp")),
        reason=reason,
    )


def parse_status(raw: Any) -> ElasticJobStatus:
    """The status as written last time; a status this operator cannot read (an older
    schema, a hand edit) starts afresh, except for the pod counter, which it keeps."""
    if not isinstance(raw, dict):
        return ElasticJobStatus()
    try:
        return openapi.parse(ElasticJobStatus, raw, where="status")
    except ValueError:
        created = raw.get("podsCreated")
        return ElasticJobStatus(pods_created=created if isinstance(created, int) else 0)


def reconcile(
    ref: JobRef,
    pods: list[PodView],
    previous: ElasticJobStatus,
    controller: pb.StatusResponse | None,
    *,
    metadata_generation: int,
    now: str,
) -> Actions:
    """Decide one round for job `ref`. `controller` is None when it did not answer."""
    spec = ref.spec
    status = dataclasses.replace(
        previous,
        observed_generation=metadata_generation,
        selector=worker_selector(ref.name),
        controller=ref.controller_address,
        total_steps=spec.job.steps,
    )
    actions = Actions(status=status)
    cond = _Conditions(status, now, metadata_generation)
    if status.phase == "Failed" and any(
        c.type == "Failed" and c.reason == "InvalidSpec" for c in status.conditions
    ):  # the spec was fixed
        status.phase, status.message = "Pending", ""
        cond.set("Failed", False, "SpecFixed", "the spec is valid now")
    if not any(c.type == "Created" for c in status.conditions):
        cond.set("Created", True, "JobCreated", "controller and worker pods requested")

    if status.phase in TERMINAL:
        actions.remove_controller = True
        status.replicas = sum(p.up for p in pods)
        status.conditions = cond.conditions
        return actions

    if controller is not None:
        _mirror(status, controller, actions, cond, ref.spec.job.checkpoint_url)
    if status.phase in TERMINAL:
        actions.remove_controller = True
        status.replicas = sum(p.up for p in pods)
        status.conditions = cond.conditions
        return actions

    up = sorted((p for p in pods if p.up), key=lambda p: p.number)
    for pod in pods:
        if not pod.terminating and pod.phase in ("Failed", "Succeeded"):
            actions.delete.append(pod.name)
            why = pod.reason or pod.phase.lower()
            actions.events.append(
                KubeEvent("Warning", "PodReplaced", f"pod {pod.name} ended ({why}); replacing it")
            )
    want = spec.pods
    if len(up) > want:
        extra = up[want:]
        for pod in extra:
            actions.delete.append(pod.name)
        actions.events.append(
            KubeEvent(
                "Normal",
                "ScaledDown",
                f"{len(up)} -> {want} pods: deleting {', '.join(p.name for p in extra)}",
            )
        )
        up = up[:want]
    missing = want - len(up)
    if missing > 0:
        start = max([status.pods_created, *[p.number + 1 for p in pods]])
        actions.create = list(range(start, start + missing))
        status.pods_created = start + missing
        names = ", ".join(worker_pod_name(ref.name, n) for n in actions.create)
        if start == 0:
            actions.events.append(KubeEvent("Normal", "Creating", f"creating pods {names}"))
        elif want > previous.replicas:
            actions.events.append(
                KubeEvent("Normal", "ScaledUp", f"{len(up)} -> {want} pods: creating {names}")
            )
        elif not any(e.reason == "PodReplaced" for e in actions.events):
            actions.events.append(
                KubeEvent(
                    "Warning",
                    "PodReplaced",
                    f"{missing} pod(s) gone (deleted, evicted or lost with a node); "
                    f"creating {names}",
                )
            )
    status.replicas = len(up)
    status.conditions = cond.conditions
    return actions


class _Conditions:
    def __init__(self, status: ElasticJobStatus, now: str, generation: int) -> None:
        self.conditions = list(status.conditions)
        self._now, self._generation = now, generation

    def set(self, kind: Any, value: bool, reason: str, message: str) -> None:
        self.conditions = set_condition(
            self.conditions,
            kind,
            value,
            reason,
            message,
            now=self._now,
            observed_generation=self._generation,
        )


def _mirror(
    status: ElasticJobStatus,
    controller: pb.StatusResponse,
    actions: Actions,
    cond: _Conditions,
    checkpoint_url: str,
) -> None:
    """Copy the controller's view into the status; events for what is new."""
    phase = _PHASES.get(controller.phase, status.phase)
    status.generation = controller.generation
    status.members = controller.plan.world_size
    status.step = controller.step
    status.loss = controller.loss
    status.failures = controller.failures
    if controller.checkpoint_step:
        status.last_checkpoint = CheckpointStatus(
            step=controller.checkpoint_step, url=checkpoint_url
        )
    newest = max(controller.recoveries, key=lambda r: r.generation, default=None)
    seen = status.last_recovery.generation if status.last_recovery else 0
    if newest is not None and newest.resumed_time and newest.generation > seen:
        mttr = max(0.0, newest.resumed_time - newest.failure_time)
        status.last_recovery = RecoveryStatus(
            generation=newest.generation,
            cause=newest.cause,
            mttr_seconds=round(mttr, 3),
            lost_steps=newest.lost_steps,
            phases={k: round(v, 3) for k, v in newest.phases.items()},
        )
        actions.events.append(
            KubeEvent(
                "Normal",
                "Recovered",
                f"generation {newest.generation}: recovered from {newest.cause} in "
                f"{mttr:.2f}s, {newest.lost_steps} step(s) lost",
            )
        )
    if phase == "Recovering" and status.phase != "Recovering":
        actions.events.append(
            KubeEvent("Warning", "Recovering", f"a worker was lost at step {controller.step}")
        )
    if phase == "Succeeded":
        cond.set("Succeeded", True, "JobSucceeded", f"trained {controller.step} steps")
        cond.set("Running", False, "JobSucceeded", "finished")
        actions.events.append(
            KubeEvent(
                "Normal",
                "Succeeded",
                f"trained {controller.step} steps, loss {controller.loss:.4f}",
            )
        )
        status.message = f"succeeded at step {controller.step}"
    elif phase == "Failed":
        why = next((e.message for e in reversed(controller.events) if e.kind == "failed"), "")
        cond.set("Failed", True, "JobFailed", why or "the controller failed the job")
        cond.set("Running", False, "JobFailed", "failed")
        actions.events.append(KubeEvent("Warning", "Failed", why or "the job failed"))
        status.message = why
    else:
        running = phase in ("Running", "Recovering")
        cond.set("Running", running, phase, f"generation {controller.generation}")
        cond.set(
            "Recovering",
            phase == "Recovering",
            "WorkerLost" if phase == "Recovering" else "Steady",
            f"{controller.failures} worker(s) lost so far",
        )
        if phase == "Pending" and controller.waiting_for:
            # what the start waits for, and which pods lag (issue 17)
            status.message = f"starting: {controller.waiting_for}"
        elif status.message.startswith("starting: "):
            status.message = ""  # started: the wait is over
    status.phase = phase


def invalid_spec(
    previous: ElasticJobStatus, message: str, *, metadata_generation: int, now: str
) -> Actions:
    """A spec the schema admits but that cannot run: Failed, with what to change; no pod
    is ever created for it."""
    status = dataclasses.replace(
        previous, phase="Failed", message=message, observed_generation=metadata_generation
    )
    cond = _Conditions(status, now, metadata_generation)
    cond.set("Failed", True, "InvalidSpec", message)
    status.conditions = cond.conditions
    events = []
    if previous.message != message:
        events.append(KubeEvent("Warning", "InvalidSpec", message))
    return Actions(status=status, events=events)
