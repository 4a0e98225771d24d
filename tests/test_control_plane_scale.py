"""What keeps the control plane's cost flat as a job grows (issue 15; bench/scale.py
measures it with thousands of simulated agents): heartbeats spread out in a large
job, the store touched once per node per lease period, a plan encoded once for every
agent and sent as a delta from the one before, liveness judged in memory and never
from the controller's own stall, and planning that stays near-linear in the number of
workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from elastiq import rpc
from elastiq.agent.plan_layout import PlanLayout, apply_plan_delta, expand
from elastiq.config import JobConfig, ModelConfig
from elastiq.controller.generation_plan import GenerationPlanner, Proposed, covered_by_joined
from elastiq.controller.job_state import ControllerConfig, NodeState
from elastiq.controller.metrics import ControllerMetrics
from elastiq.controller.node_registry import STORE_LEASE_TTLS, NodeRegistry
from elastiq.controller.planner import WorkerRef
from elastiq.controller.server import Controller
from elastiq.controller.store_memory import MemoryStore
from elastiq.controller.wire import plan_delta, plan_to_layout, progressions
from elastiq.proto import elastiq_pb2 as pb
from tests.live_controller import Session, planned_one_worker, with_controller


class CountingStore(MemoryStore):
    """The embedded store, counting lease keepalives (what etcd would be sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0

    async def refresh_lease(self, lease: int) -> bool:
        self.refreshes += 1
        return await super().refresh_lease(lease)


def _registry(store: MemoryStore | None = None, **control: float) -> NodeRegistry:
    config = ControllerConfig(**control)  # type: ignore[arg-type]
    return NodeRegistry(store or MemoryStore(), "/elastiq/t/", config, ControllerMetrics())


def _fake_nodes(registry: NodeRegistry, count: int) -> None:
    for i in range(count):
        registry.nodes[f"n{i}"] = NodeState(f"n{i}", 4, "", 0, "s", 0.0)


def test_a_large_job_is_told_to_heartbeat_less_often_and_its_nodes_may_be_silent_longer() -> None:
    registry = _registry(max_heartbeat_rate=500.0)
    _fake_nodes(registry, 250)  # 1,000 workers: 500 heartbeats/s at the base interval
    assert registry.heartbeat_interval() == 0.5
    _fake_nodes(registry, 1000)  # 4,000 workers
    assert registry.heartbeat_interval() == 2.0
    _fake_nodes(registry, 2500)  # 10,000 workers: 5 s would be needed; the cap holds
    assert registry.heartbeat_interval() == 4.0
    node = registry.nodes["n0"]
    registry.tell_interval(node)
    # a silent node is lost after as many of its intervals as in a small job
    assert registry.silence_limit(node) == pytest.approx(3.0 * 4.0 / 0.5)
    assert _registry(max_heartbeat_rate=0.0).heartbeat_interval() == 0.5


def test_an_unworkable_heartbeat_budget_is_refused_with_what_to_change() -> None:
    with pytest.raises(ValueError, match="max_heartbeat_rate"):
        ControllerConfig(max_heartbeat_rate=-1.0)
    with pytest.raises(ValueError, match="max_heartbeat_interval_s"):
        ControllerConfig(max_heartbeat_interval_s=0.25)


def test_heartbeats_touch_the_store_once_per_lease_period_not_each_time() -> None:
    async def body() -> None:
        store = CountingStore()
        registry = _registry(store, lease_ttl_s=3.0, heartbeat_interval_s=0.5)
        node = await registry.admit(pb.RegisterRequest(node_id="n", slots=4), "secret")
        for _ in range(12):  # what six seconds of heartbeats used to send to etcd
            await registry.refresh(node)
        assert store.refreshes == 0
        node.lease_refreshed -= registry.silence_limit(node)  # one lease period later
        await registry.refresh(node)
        await registry.refresh(node)
        assert store.refreshes == 1
        assert node.lease_ttl_s == STORE_LEASE_TTLS * 3.0

    asyncio.run(body())


def test_a_node_told_a_longer_interval_gets_a_store_lease_that_outlives_it() -> None:
    async def body() -> None:
        registry = _registry(max_heartbeat_rate=2.0)
        node = await registry.admit(pb.RegisterRequest(node_id="n", slots=4), "secret")
        first = node.lease
        _fake_nodes(registry, 8)  # the job grew: heartbeats are spread out
        registry.tell_interval(node)
        await registry.refresh(node)
        assert node.lease != first
        assert node.lease_ttl_s == STORE_LEASE_TTLS * registry.silence_limit(node)
        kv = await registry.store.get("/elastiq/t/nodes/n")
        assert kv is not None and kv.lease == node.lease

    asyncio.run(body())


def test_a_plan_is_encoded_once_for_every_agent() -> None:
    registry = _registry()
    _fake_nodes(registry, 3)
    registry.broadcast(pb.Directive(plan=pb.Plan(generation=7)))
    sent = [n.queue.get_nowait() for n in registry.nodes.values()]
    assert all(isinstance(s, rpc.Encoded) for s in sent)
    assert len({id(s) for s in sent}) == 1, "each agent got its own encoding"
    assert pb.Directive.FromString(sent[0].wire).plan.generation == 7  # type: ignore[union-attr]


def test_a_stalled_controller_does_not_take_its_own_stall_for_dead_nodes() -> None:
    """Liveness is judged in memory; a controller that could not run for longer than
    the lease TTL (a starved or paused process) hears the agents again before it
    judges anyone, where store-side lease expiry lost every node at once."""

    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        job = controller.job
        assert job is not None

        async def beat() -> None:
            while True:
                await session.heartbeat("node-a")
                await asyncio.sleep(0.1)

        beating = asyncio.ensure_future(beat())
        try:
            await asyncio.sleep(0.3)
            time.sleep(1.6)  # the whole controller stalls past the 1 s TTL
            await asyncio.sleep(1.0)
        finally:
            beating.cancel()
        assert "node-a" in job.nodes
        assert not any(e.kind == "node_lost" for e in job.events)
        # and silence is still noticed: no heartbeats now, so node-a is lost
        for _ in range(150):
            if "node-a" not in job.nodes:
                break
            await asyncio.sleep(0.02)
        assert "node-a" not in job.nodes

    with_controller(
        body, JobConfig(job="stall", steps=200), lease_ttl_s=1.0, heartbeat_interval_s=0.25
    )


@pytest.mark.parametrize("stages", [1, 8])
def test_replanning_10000_workers_after_a_node_loss_takes_well_under_a_second(
    stages: int,
) -> None:
    """Measured 0.17-0.19 s here; before, one list scan per rank made it 1.4 s (data
    parallel) and 1.3 s (PP8): quadratic in the number of workers."""
    job = JobConfig(pipeline_stages=stages, model=ModelConfig(n_layers=16))
    planner = GenerationPlanner(job, ControllerConfig(), "r", ControllerMetrics())
    planner.learn_model(job.unit_numel())
    members = [WorkerRef(f"n{i // 4:05d}", i % 4, f"n{i // 4:05d}.w{i % 4}") for i in range(10000)]

    async def replan() -> float:
        first = await planner.propose(
            generation=1,
            reason="start",
            members=members,
            current=None,
            source=None,
            holders=set(),
            reached_step=0,
            takeover=False,
        )
        assert isinstance(first, Proposed)
        survivors = [m for m in members if m.node_id != "n00100"]
        started = time.perf_counter()
        second = await planner.propose(
            generation=2,
            reason="n00100 lost",
            members=survivors,
            current=first.layout,
            source=first.layout,
            holders={m.worker_id for m in members},
            reached_step=10,
            takeover=False,
        )
        took = time.perf_counter() - started
        assert isinstance(second, Proposed) and second.layout.world_size == 9996
        return took

    assert asyncio.run(replan()) < 1.0


def _plans(stages: int, workers: int = 256, zero: int = 1) -> tuple[pb.Plan, pb.Plan, pb.Plan]:
    """Generation 1 of `workers`, 2 after node n00003 is lost, 3 after two nodes join."""
    job = JobConfig(pipeline_stages=stages, model=ModelConfig(n_layers=16), zero=zero)
    planner = GenerationPlanner(job, ControllerConfig(), "r", ControllerMetrics())
    planner.learn_model(job.unit_numel())
    members = [
        WorkerRef(f"n{i // 4:05d}", i % 4, f"n{i // 4:05d}.w{i % 4}") for i in range(workers)
    ]
    grown = members[4:] + [WorkerRef(f"x{i // 4}", i % 4, f"x{i // 4}.w{i % 4}") for i in range(8)]
    plans: list[pb.Plan] = []

    async def propose() -> None:
        current = None
        for generation, who in enumerate((members, members[4:], grown), start=1):
            proposal = await planner.propose(
                generation=generation,
                reason="test",
                members=sorted(who),
                current=current,
                source=current,
                holders={m.worker_id for m in members},
                reached_step=0,
                takeover=False,
            )
            assert isinstance(proposal, Proposed)
            current = proposal.layout
            plans.append(proposal.plan)

    asyncio.run(propose())
    return plans[0], plans[1], plans[2]


@pytest.mark.parametrize("stages", [1, 4])
def test_a_plan_delta_rebuilds_exactly_the_plan_and_leaves_out_the_assignments(
    stages: int,
) -> None:
    first, lost, joined = _plans(stages)
    for base, plan in ((first, lost), (lost, joined)):
        delta = plan_delta(base, plan)
        rebuilt = apply_plan_delta(base, delta)
        assert rebuilt == plan
        PlanLayout.parse(rebuilt)
    delta = plan_delta(first, lost)
    assert len(delta.runs) <= 2 * stages and not delta.plan.assignments
    assignments = sum(a.ByteSize() for a in lost.assignments)
    assert delta.ByteSize() < lost.ByteSize() - assignments * 0.9
    # newcomers are sent whole: nothing of theirs is in the base
    newcomers = {a.worker_id for a in plan_delta(lost, joined).plan.assignments}
    assert newcomers == {f"x{i // 4}.w{i % 4}" for i in range(8)}


def test_a_plan_delta_from_another_base_or_past_its_ranks_is_refused() -> None:
    first, lost, _ = _plans(1)
    delta = plan_delta(first, lost)
    with pytest.raises(ValueError, match="delta from generation 1"):
        apply_plan_delta(lost, delta)
    delta.runs[0].base_rank = 10_000
    with pytest.raises(ValueError, match="no such rank"):
        apply_plan_delta(first, delta)
    delta.runs[0].count = 0
    with pytest.raises(ValueError, match="bad assignment run"):
        apply_plan_delta(first, delta)


def test_a_batch_of_reports_is_handled_as_each_alone_with_an_ack_for_each() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await session.register("node-b", slots=2)
        secret = session.secrets["node-b"]
        units = JobConfig().unit_numel()
        batch = pb.EventBatch(node_secret=secret, node_id="node-b")
        for slot in (0, 1):
            batch.reports.add(
                kind=pb.WORKER_READY,
                worker_id=f"node-b.w{slot}",
                slot=slot,
                pid=10 + slot,
                model=pb.ModelShape(unit_numel=units),
            )
        # a JOINED of a generation that does not exist yet: refused on its own
        batch.reports.add(kind=pb.JOINED, worker_id="node-b.w0", slot=0, pid=10, generation=0)
        reply = await session.client.call("ReportEvents", batch)
        assert [a.accepted for a in reply.acks][:2] == [True, True] and len(reply.acks) == 3
        job = controller.job
        assert job is not None and set(job.nodes["node-b"].workers) == {"node-b.w0", "node-b.w1"}
        # one report that names another node refuses the whole batch, changing nothing
        bad = pb.EventBatch(node_secret=secret, node_id="node-b")
        bad.reports.add(kind=pb.WORKER_EXITED, worker_id="node-b.w1", slot=1, pid=11)
        bad.reports.add(kind=pb.WORKER_EXITED, worker_id="node-a.w0", node_id="node-a")
        with pytest.raises(rpc.RpcRejected, match="another node"):
            await session.client.call("ReportEvents", bad)
        assert set(job.nodes["node-b"].workers) == {"node-b.w0", "node-b.w1"}

    with_controller(body, JobConfig(job="batch", steps=200), min_workers=8)


@pytest.mark.parametrize(
    "values",
    [
        [],
        [7],
        [-1, -1, -1],
        list(range(10_000)),
        [(r // 4 + 1) * 4 % 64 for r in range(64)],  # data-parallel buddies, wrapping
        [5, 3, 1, -1, -1, 2, 2, 9, 9, 9, 10],
        list(range(0, 96, 8)) + list(range(1, 96, 8)),  # a PP8 stage's ranks, two stripes
    ],
)
def test_rank_lists_survive_their_progressions(values: list[int]) -> None:
    runs = progressions(values)
    assert expand(runs, len(values)) == values
    assert len(runs.start) <= max(1, len(values))


def test_progressions_longer_than_the_world_are_refused() -> None:
    runs = pb.Progressions(start=[0], step=[1], count=[2**30], repeat=[1])
    with pytest.raises(ValueError, match="at most 8"):
        expand(runs, 8)
    with pytest.raises(ValueError, match="unequal"):
        expand(pb.Progressions(start=[0], step=[1], count=[1]), 8)


def test_a_node_that_never_joins_its_generation_is_lost_after_the_join_timeout() -> None:
    """A stalled agent (it stopped reading its plan stream) holds no one for longer
    than join_timeout_s: its node is lost, and the next generation takes its state
    from the members that did join the interrupted one (node-a is the only holder
    of generation 2; nobody holds generation 1 any more)."""

    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        job = controller.job
        assert job is not None
        await session.register("node-b")
        await session.ready_worker("node-b")
        await _until_true(lambda: job.generation == 2)
        ack = await session.report(
            kind=pb.JOINED, worker_id="node-a.w0", slot=0, pid=1, generation=2
        )
        assert ack.accepted
        for _ in range(150):  # node-b heartbeats on but never joins generation 2
            await session.heartbeat("node-b")
            if "node-b" not in job.nodes:
                break
            await asyncio.sleep(0.02)
        assert "node-b" not in job.nodes
        assert any("did not join generation 2" in e.message for e in job.events)
        await _until_true(lambda: job.generation == 3)
        assert not job.over, job.failure_message
        assert job.layout is not None and job.layout.worker_ids() == ["node-a.w0"]
        assert job.plan is not None and job.plan.source_generation == 2

    with_controller(body, JobConfig(job="late", steps=200), join_timeout_s=1.0)


def test_an_interrupted_generation_is_a_source_only_when_its_joined_members_hold_it_all() -> None:
    _, lost, _ = _plans(1, zero=0)
    layout = plan_to_layout(lost)
    ids = [a.worker_id for a in lost.assignments]
    assert covered_by_joined(layout, {ids[0]})  # one replica of a DP stage holds it all
    assert not covered_by_joined(layout, set())
    pipeline = plan_to_layout(_plans(4)[1])
    first_stage = {pipeline.workers[r].worker_id for r in pipeline.stages[0].ranks}
    assert not covered_by_joined(pipeline, first_stage), "ZeRO-1 moments are not replicated"


async def _until_true(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not met")
