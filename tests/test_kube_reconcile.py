"""The operator's decisions as a pure function (kube/reconcile.py): microseconds each."""

from __future__ import annotations

from typing import Any

from elastiq.kube import openapi
from elastiq.kube.job_spec import parse_spec
from elastiq.kube.job_status import ElasticJobStatus
from elastiq.kube.reconcile import PodView, invalid_spec, parse_status, pod_view, reconcile
from elastiq.kube.resources import JobRef
from elastiq.proto import elastiq_pb2 as pb

NOW = "2026-12-02T12:00:00Z"


def ref(**spec: Any) -> JobRef:
    body = {"replicas": 4, "minReplicas": 2, "maxReplicas": 8, "trainer": {"image": "i"}}
    body.update(spec)
    return JobRef(
        name="lm",
        namespace="ml",
        uid="u",
        spec=parse_spec(body),
        image="elastiq",
        controller_host="lm-controller.ml.svc",
    )


def pods(*numbers: int, phase: str = "Running") -> list[PodView]:
    return [PodView(f"lm-w{n}", n, phase, False, "") for n in numbers]


def status(**fields: Any) -> ElasticJobStatus:
    return ElasticJobStatus(**fields)


def controller(phase: pb.JobPhase = pb.JOB_RUNNING, **fields: Any) -> pb.StatusResponse:
    reply = pb.StatusResponse(phase=phase, **fields)
    return reply


def test_a_new_job_creates_its_pods_counting_from_zero() -> None:
    actions = reconcile(ref(), [], status(), None, metadata_generation=1, now=NOW)
    assert actions.create == [0, 1, 2, 3] and actions.delete == []
    assert actions.status.pods_created == 4 and actions.status.phase == "Pending"
    assert [e.reason for e in actions.events] == ["Creating"]
    assert actions.status.selector == "elastiq.dev/job=lm,elastiq.dev/role=worker"
    created = next(c for c in actions.status.conditions if c.type == "Created")
    assert created.status == "True" and created.last_transition_time == NOW


def test_a_failed_pod_is_deleted_and_replaced_by_a_newcomer_with_a_new_name() -> None:
    seen = [*pods(0, 1, 3), PodView("lm-w2", 2, "Failed", False, "Evicted")]
    actions = reconcile(
        ref(), seen, status(pods_created=4, replicas=4), None, metadata_generation=1, now=NOW
    )
    assert actions.delete == ["lm-w2"] and actions.create == [4]
    assert actions.status.pods_created == 5
    (event,) = actions.events
    assert event.reason == "PodReplaced" and "Evicted" in event.message


def test_a_deleted_pod_is_replaced() -> None:
    actions = reconcile(
        ref(),
        pods(0, 2, 3),
        status(pods_created=4, replicas=4),
        None,
        metadata_generation=1,
        now=NOW,
    )
    assert actions.create == [4] and [e.reason for e in actions.events] == ["PodReplaced"]


def test_scaling_down_deletes_the_newest_pods_and_up_creates_new_ones() -> None:
    down = reconcile(
        ref(replicas=2),
        pods(0, 1, 4, 5),
        status(pods_created=6, replicas=4),
        None,
        metadata_generation=2,
        now=NOW,
    )
    assert down.delete == ["lm-w4", "lm-w5"] and down.create == []
    assert [e.reason for e in down.events] == ["ScaledDown"]
    up = reconcile(
        ref(replicas=6),
        pods(0, 1),
        status(pods_created=6, replicas=2),
        None,
        metadata_generation=3,
        now=NOW,
    )
    assert up.create == [6, 7, 8, 9] and [e.reason for e in up.events] == ["ScaledUp"]


def test_a_lost_pod_counter_never_reuses_a_name() -> None:
    """An operator that lost the status (a hand edit) still counts past every pod it sees."""
    actions = reconcile(ref(), pods(7, 9), status(), None, metadata_generation=1, now=NOW)
    assert actions.create == [10, 11]


def test_pending_and_terminating_pods_are_not_replaced_twice() -> None:
    seen = [*pods(0, 1, 2), PodView("lm-w3", 3, "Pending", False, "")]
    assert (
        reconcile(ref(), seen, status(pods_created=4), None, metadata_generation=1, now=NOW).create
        == []
    )
    gone = [*pods(0, 1, 2), PodView("lm-w3", 3, "Running", True, "")]
    actions = reconcile(ref(), gone, status(pods_created=4), None, metadata_generation=1, now=NOW)
    assert actions.create == [4] and actions.delete == []


def test_the_controllers_view_is_mirrored_with_one_event_per_recovery() -> None:
    reply = controller(
        generation=3,
        step=57,
        loss=2.5,
        failures=1,
        checkpoint_step=50,
        plan=pb.Plan(world_size=4),
        recoveries=[
            pb.Recovery(
                generation=3,
                cause="node lm-w1 lost",
                failure_time=100.0,
                resumed_time=100.4,
                lost_steps=0,
                phases={"detect": 0.1},
            )
        ],
    )
    job = ref(job={"checkpointUrl": "s3://bucket/lm", "checkpointEvery": 10})
    first = reconcile(
        job,
        pods(0, 2, 3, 4),
        status(pods_created=5, replicas=4),
        reply,
        metadata_generation=1,
        now=NOW,
    )
    st = first.status
    assert (st.phase, st.generation, st.members, st.step, st.failures) == ("Running", 3, 4, 57, 1)
    assert st.last_recovery is not None and st.last_recovery.mttr_seconds == 0.4
    assert st.last_checkpoint is not None
    assert (st.last_checkpoint.step, st.last_checkpoint.url) == (50, "s3://bucket/lm")
    assert [e.reason for e in first.events] == ["Recovered"]
    again = reconcile(job, pods(0, 2, 3, 4), st, reply, metadata_generation=1, now=NOW)
    assert again.events == []
    running = next(c for c in again.status.conditions if c.type == "Running")
    assert running.status == "True" and running.last_transition_time == NOW


def test_a_finished_job_creates_nothing_and_lets_the_controller_go() -> None:
    done = reconcile(
        ref(),
        pods(0, 1),
        status(pods_created=4),
        controller(pb.JOB_SUCCEEDED, step=400),
        metadata_generation=1,
        now=NOW,
    )
    assert done.status.phase == "Succeeded" and done.create == [] and done.remove_controller
    assert [e.reason for e in done.events] == ["Succeeded"]
    later = reconcile(ref(), [], done.status, None, metadata_generation=1, now=NOW)
    assert later.create == [] and later.events == [] and later.remove_controller


def test_a_failed_job_carries_the_controllers_reason() -> None:
    reply = controller(
        pb.JOB_FAILED, events=[pb.Event(kind="failed", message="3 stages cannot share 2 units")]
    )
    actions = reconcile(ref(), pods(0), status(), reply, metadata_generation=1, now=NOW)
    failed = next(c for c in actions.status.conditions if c.type == "Failed")
    assert failed.message == "3 stages cannot share 2 units" and actions.create == []


def test_a_starting_job_says_what_it_waits_for() -> None:
    """Issue 17: before the first generation the job's message is the controller's
    wait, naming the lagging pods; once it runs the wait is gone."""
    wait = "2 of 4 workers ready, minimum 4, waiting 1m20s; lm-w3: 0 of 1 ready"
    reply = controller(pb.JOB_PENDING, waiting_for=wait)
    actions = reconcile(ref(), pods(0, 1, 2, 3), status(), reply, metadata_generation=1, now=NOW)
    assert actions.status.phase == "Pending" and actions.status.message == f"starting: {wait}"
    running = reconcile(
        ref(), pods(0, 1, 2, 3), actions.status, controller(), metadata_generation=1, now=NOW
    )
    assert "waiting" not in running.status.message


def test_an_invalid_spec_fails_once_and_a_fixed_one_runs() -> None:
    bad = invalid_spec(status(), "replicas too high", metadata_generation=2, now=NOW)
    assert bad.status.phase == "Failed" and [e.reason for e in bad.events] == ["InvalidSpec"]
    assert (
        invalid_spec(bad.status, "replicas too high", metadata_generation=2, now=NOW).events == []
    )
    fixed = reconcile(ref(), [], bad.status, None, metadata_generation=3, now=NOW)
    assert fixed.status.phase == "Pending" and fixed.create == [0, 1, 2, 3]


def test_status_round_trips_and_a_foreign_status_keeps_only_the_pod_counter() -> None:
    actions = reconcile(ref(), [], status(), None, metadata_generation=1, now=NOW)
    raw = openapi.dump(actions.status)
    assert parse_status(raw) == actions.status
    assert parse_status({"podsCreated": 9, "phase": "Weird"}).pods_created == 9


def test_only_pods_named_like_the_jobs_workers_count() -> None:
    def raw(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"phase": "Running"}}

    assert pod_view(raw("lm-w12"), "lm") == PodView("lm-w12", 12, "Running", False, "")
    assert pod_view(raw("lm-controller-abc"), "lm") is None
    assert pod_view(raw("lm-wx"), "lm") is None
