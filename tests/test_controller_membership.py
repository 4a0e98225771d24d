"""Membership changes against a live controller (gRPC on port 0, embedded store)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from elastiq.config import JobConfig
from elastiq.controller.job import JobController
from elastiq.controller.server import Controller
from elastiq.proto import elastiq_pb2 as pb
from tests.live_controller import Session, planned_one_worker, with_controller


async def _until(what: str, ok: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if ok():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(what)


async def _joined(session: Session, node: str, generation: int) -> None:
    ack = await session.report(
        node, kind=pb.JOINED, worker_id=f"{node}.w0", slot=0, pid=1, generation=generation
    )
    assert ack.accepted, ack.reason


async def _joining_2_with_node_c_waiting(
    controller: Controller, session: Session
) -> pb.RegisterResponse:
    """Generation 1 is node-a alone; node-b makes generation 2, which node-a has joined
    and node-b not yet; node-c is ready meanwhile. Returns node-b's registration."""
    await planned_one_worker(controller, session)
    job = controller.job
    assert job is not None
    reply = await session.register("node-b")
    await session.ready_worker("node-b")
    await _until("generation 2", lambda: job.generation == 2)
    await _joined(session, "node-a", 2)
    await session.register("node-c")
    await session.ready_worker("node-c")
    await asyncio.sleep(0.3)
    return reply


def test_a_newcomer_waits_for_the_generation_being_joined_to_complete() -> None:
    """Two scale-ups 0.2 s apart once failed a job: generation 3 was planned from
    generation 1's layout while the workers had already moved to generation 2's."""

    async def body(controller: Controller, session: Session) -> None:
        await _joining_2_with_node_c_waiting(controller, session)
        job = controller.job
        assert job is not None
        assert job.generation == 2, "planned past a generation still being joined"
        await _joined(session, "node-b", 2)
        await _until("generation 3", lambda: job.generation == 3)
        assert job.layout is not None
        assert set(job.layout.worker_ids()) == {"node-a.w0", "node-b.w0", "node-c.w0"}
        assert job.generations.completed is not None
        assert job.generations.completed.generation == 2

    with_controller(body, JobConfig(job="membership", steps=200), lease_ttl_s=30.0)


def test_a_failure_while_a_newcomer_waits_plans_them_together() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        job = controller.job
        assert job is not None

        for node in ("node-b", "node-c"):
            await session.register(node)
            await session.ready_worker(node)
        await _until("generation 2", lambda: job.generation >= 2)
        settled = job.generation  # being joined: node-d has to wait
        await session.register("node-d")
        await session.ready_worker("node-d")
        await asyncio.sleep(0.2)
        assert job.generation == settled
        ack = await session.report(
            "node-b",
            kind=pb.WORKER_EXITED,
            worker_id="node-b.w0",
            slot=0,
            pid=1,
            generation=settled,
            detail="exited with code -9",
        )
        assert ack.accepted, ack.reason
        await _until("a generation after the failure", lambda: job.generation == settled + 1)
        assert job.layout is not None
        assert set(job.layout.worker_ids()) == {"node-a.w0", "node-c.w0", "node-d.w0"}

    with_controller(body, JobConfig(job="membership", steps=200), lease_ttl_s=30.0)


def test_every_node_expiring_at_once_waits_for_their_agents_to_come_back() -> None:
    """A controller stalled past the lease TTL expires every node together; the agents
    register again at once with their workers, and the job goes on instead of failing."""

    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        job = controller.job
        assert job is not None
        # no heartbeats: the lease runs out
        await _until("node-a lost", lambda: "node-a" not in job.nodes, 10)
        await asyncio.sleep(0.3)
        assert not job.over, "failed the job with no grace for the agents to return"
        reply = await session.register(
            "node-a",
            workers=[
                pb.WorkerInfo(
                    worker_id="node-a.w0",
                    slot=0,
                    pid=1,
                    phase=pb.WORKER_PHASE_RUNNING,
                    generation=1,
                    step=3,
                )
            ],
        )

        async def beat() -> None:
            while True:
                await session.heartbeat("node-a", lease_id=reply.lease_id)
                await asyncio.sleep(0.2)

        beating = asyncio.ensure_future(beat())
        try:
            await _until("the job running again", lambda: job.phase == pb.JOB_RUNNING, 10)
            await asyncio.sleep(2.5)  # past the grace window: still running
        finally:
            beating.cancel()
        assert not job.over and job.layout is not None
        # the same member is back: generation 1 goes on, no replan, nothing recovered
        assert job.generation == 1 and job.layout.worker_ids() == ["node-a.w0"]
        kinds = [e.kind for e in job.events]
        assert "all_lost" in kinds and "rejoined" in kinds and "failed" not in kinds
        assert not job.recoveries

    with_controller(
        body,
        JobConfig(job="membership", steps=200),
        lease_ttl_s=1.0,
        heartbeat_interval_s=0.25,
    )


def test_progress_in_a_generation_counts_as_joining_it_when_the_report_is_lost() -> None:
    async def body(controller: Controller, session: Session) -> None:
        reply = await _joining_2_with_node_c_waiting(controller, session)
        job = controller.job
        assert job is not None
        assert job.generation == 2
        # node-b's JOINED never arrives; its heartbeat shows it stepping in generation 2
        progress = pb.WorkerProgress(
            worker_id="node-b.w0", generation=2, step=3, phase=pb.WORKER_PHASE_RUNNING
        )
        await session.heartbeat("node-b", lease_id=reply.lease_id, progress=[progress])
        await _until("generation 3", lambda: job.generation == 3)

    with_controller(body, JobConfig(job="membership", steps=200), lease_ttl_s=30.0)


def test_a_ready_worker_left_outside_a_completed_generation_is_planned() -> None:
    """Whatever became of the request a worker's readiness made (here: dropped), the
    generation completing plans it: nobody stays ready and unplanned."""

    async def body(controller: Controller, session: Session) -> None:
        await _joining_2_with_node_c_waiting(controller, session)
        job = controller.job
        assert job is not None
        job._growth_waiting.clear()  # the lost request
        await _joined(session, "node-b", 2)
        await _until("generation 3", lambda: job.generation == 3)
        assert job.layout is not None and "node-c.w0" in job.layout.worker_ids()

    with_controller(body, JobConfig(job="membership", steps=200), lease_ttl_s=30.0)


def test_a_retried_worker_ready_changes_nothing() -> None:
    """An agent retries a report whose answer was lost under load: the controller
    already has the worker (same process), so it keeps its joined state and plans
    nothing new."""

    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        job = controller.job
        assert job is not None
        worker = job.nodes["node-a"].workers["node-a.w0"]
        assert worker.joined_generation == 1
        ack = await session.ready_worker()
        assert ack.accepted, ack.reason
        await asyncio.sleep(0.3)
        assert job.nodes["node-a"].workers["node-a.w0"] is worker
        assert worker.joined_generation == 1 and job.generation == 1
        # a new process in the slot (another pid) is a new worker: planned again
        ack = await session.ready_worker(pid=2)
        assert ack.accepted, ack.reason
        assert job.nodes["node-a"].workers["node-a.w0"].pid == 2

    with_controller(body, JobConfig(job="membership", steps=200), lease_ttl_s=30.0)


def test_a_live_node_that_registers_again_keeps_its_workers_in_the_plan() -> None:
    """An agent whose stream or heartbeats broke registers again with its secret and
    the workers it still runs: a reconnect, not a loss, so no recovery; a worker it no
    longer runs is a failure as usual."""

    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        job = controller.job
        assert job is not None
        first = job.nodes["node-a"]
        running = pb.WorkerInfo(
            worker_id="node-a.w0", slot=0, pid=1, phase=pb.WORKER_PHASE_RUNNING, generation=1
        )
        secret = session.secrets["node-a"]
        reply = await session.register("node-a", node_secret=secret, workers=[running])
        assert reply.lease_id == first.lease and reply.node_secret == secret
        await asyncio.sleep(0.3)
        assert job.generation == 1 and job.nodes["node-a"] is first
        assert first.workers["node-a.w0"].joined_generation == 1
        assert not job.recoveries and "node_lost" not in [e.kind for e in job.events]
        # again, now without the worker: it died meanwhile, and that is a failure
        await session.register("node-a", node_secret=secret)
        await _until("node-a.w0 taken for failed", lambda: job.failures == 1)
        assert "node-a.w0" not in job.nodes["node-a"].workers

    with_controller(body, JobConfig(job="membership", steps=200), lease_ttl_s=30.0)


async def _node_b_of_2_with_one_ready(controller: Controller, session: Session) -> JobController:
    """Generation 1 is node-a alone; node-b registers 2 slots and one is ready."""
    await planned_one_worker(controller, session)
    job = controller.job
    assert job is not None
    await session.register("node-b", slots=2)
    await session.ready_worker("node-b")
    return job


def test_a_new_node_joins_with_all_its_workers_in_one_generation() -> None:
    """A node of 2 joins the running job: its first ready worker waits for the second
    (up to settle_s), and both come in with one plan, not two reconfigurations."""

    async def body(controller: Controller, session: Session) -> None:
        job = await _node_b_of_2_with_one_ready(controller, session)
        await asyncio.sleep(0.4)
        assert job.generation == 1, "planned the node's first worker alone"
        await session.ready_worker("node-b", worker_id="node-b.w1", slot=1, pid=2)
        await _until("generation 2", lambda: job.generation == 2)
        assert job.layout is not None
        assert set(job.layout.worker_ids()) == {"node-a.w0", "node-b.w0", "node-b.w1"}
        await asyncio.sleep(0.3)
        assert job.generation == 2

    with_controller(body, JobConfig(job="membership", steps=200), lease_ttl_s=30.0, settle_s=3.0)


def test_a_new_node_whose_other_worker_never_comes_joins_after_the_settle() -> None:
    async def body(controller: Controller, session: Session) -> None:
        job = await _node_b_of_2_with_one_ready(controller, session)
        await _until("generation 2", lambda: job.generation == 2, timeout_s=3.0)
        assert job.layout is not None
        assert set(job.layout.worker_ids()) == {"node-a.w0", "node-b.w0"}

    with_controller(body, JobConfig(job="membership", steps=200), lease_ttl_s=30.0, settle_s=0.5)
