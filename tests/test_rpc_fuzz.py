"""Every RPC of a live controller driven with generated messages (Hypothesis),
valid-looking ones with hostile values included: the controller never crashes, never
answers UNKNOWN or INTERNAL, and a refused request changes nothing, in memory or in
the store. The controller is real (gRPC on port 0, embedded store) and runs on an
event loop in a thread of its own; each example is one real RPC."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from elastiq import rpc
from elastiq.config import JobConfig
from elastiq.controller.job import ControllerConfig
from elastiq.controller.server import Controller, ServerConfig
from elastiq.proto import elastiq_pb2 as pb
from tests.live_controller import AGENT_TOKEN, CREDENTIALS, OPERATOR_TOKEN, Session

INT32 = st.one_of(st.integers(-3, 10), st.integers(-(2**31), 2**31 - 1))
INT64 = st.one_of(st.integers(-3, 300), st.integers(-(2**63), 2**63 - 1))
FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, -1.0, 1e300])
)
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", "x" * 5000, "a/../b", 'a"b']))
ENUM = st.integers(-2, 15)


class LiveController:
    """A controller on its own loop, with node-a registered and its worker planned."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.controller = Controller(
            JobConfig(job="fuzz", steps=100),
            # leases that outlive the test: a node registered by one example must not
            # expire (a legitimate change) while a later example is checked
            ControllerConfig(min_workers=1, settle_s=0.0, coalesce_s=0.0, lease_ttl_s=3600.0),
            ServerConfig(),
            CREDENTIALS,
        )
        self.run(self.controller.start())
        self.session: Session = self.run(self._session())
        self.run(self.session.register("node-a", slots=2))
        self.run(self.session.ready_worker("node-a"))
        self.settle()
        self.secret = self.session.secrets["node-a"]

    async def _session(self) -> Session:
        return Session(f"127.0.0.1:{self.controller.port}")  # its channel on this loop

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def settle(self) -> None:
        """Wait until no plan is being made (so state changes only by the next call)."""

        async def idle() -> None:
            job = self.controller.job
            for _ in range(200):
                if (
                    job is not None
                    and job.replans.idle
                    and (job._start_task is None or job._start_task.done())
                ):
                    return
                await asyncio.sleep(0.01)

        self.run(idle())

    def state(self) -> Any:
        async def read() -> Any:
            job = self.controller.job
            assert job is not None and self.controller.store is not None
            nodes = {
                n: (s.secret, s.lease, s.slots, s.address, repr(sorted(s.workers.items())))
                for n, s in sorted(job.nodes.items())
            }
            store = [(kv.key, kv.value) for kv in await self.controller.store.get_prefix("/")]
            return (
                nodes,
                job.phase,
                job.generation,
                [str(e) for e in job.events],
                sorted(job.planner.unit_costs.items()),
                job.failures,
                store,
            )

        return self.run(read())

    def close(self) -> None:
        self.run(self.session.close())
        self.run(self.controller.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveController]:
    controller = LiveController()
    try:
        yield controller
    finally:
        controller.close()


def _call(live: LiveController, method: str, request: Any) -> None:
    """One RPC; the invariants every answer must keep."""
    live.settle()
    before = live.state()
    try:
        live.run(live.session.client.call(method, request))
        event(f"{method}: accepted")
    except rpc.RpcRejected as exc:
        event(f"{method}: {exc.code}")
        assert exc.code not in ("UNKNOWN", "INTERNAL"), exc
        assert live.state() == before, f"a refused {method} changed state: {exc}"
    except rpc.RpcRetryable as exc:
        assert "UNKNOWN" not in str(exc) and "INTERNAL" not in str(exc), exc
        assert "UNAVAILABLE" in str(exc) or "DEADLINE" in str(exc), exc
    controller = live.controller
    assert controller.job is not None and controller.service.job is controller.job


NODES = st.sampled_from(["node-a", "node-b", "ghost", "", "a/../../x", "n" * 200])
WORKERS = st.sampled_from(["node-a.w0", "node-a.w1", "node-b.w0", "node-a", "", "x" * 300])
SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


class Fields:
    """Valid-looking messages with a few hostile fields: each example picks which
    fields to corrupt (none, one or two) and draws those from a hostile strategy, the
    rest from values a correct peer sends, so both the refusals and the accepted paths
    are driven."""

    def __init__(self, data: st.DataObject, names: list[str]) -> None:
        self.data = data
        self.corrupt = data.draw(st.sets(st.sampled_from(names), max_size=2))

    def __call__(self, name: str, valid: st.SearchStrategy[Any], hostile: Any) -> Any:
        return self.data.draw(hostile if name in self.corrupt else valid)


@SETTINGS
@given(data=st.data())
def test_register_never_crashes_and_a_refusal_changes_nothing(
    live: LiveController, data: st.DataObject
) -> None:
    f = Fields(data, ["token", "node_id", "slots", "address", "workers", "model", "secret"])
    node = f("node_id", st.sampled_from(["node-b", "node-c", "node-d"]), NODES)
    slots = f("slots", st.integers(1, 4), INT32)
    valid_workers = st.lists(
        st.builds(
            pb.WorkerInfo,
            worker_id=st.just(f"{node}.w0"),
            slot=st.just(0),
            pid=st.integers(1, 10**6),
            phase=st.sampled_from([pb.WORKER_PHASE_READY, pb.WORKER_PHASE_RUNNING]),
            generation=st.integers(0, 2),
            step=st.integers(0, 100),
        ),
        max_size=1,
    )
    hostile_workers = st.lists(
        st.builds(
            pb.WorkerInfo,
            worker_id=WORKERS,
            slot=INT32,
            pid=INT32,
            phase=ENUM,
            generation=INT64,
            step=INT64,
        ),
        max_size=4,
    )
    units = list(JobConfig().unit_numel())
    request = pb.RegisterRequest(
        token=f("token", st.just(AGENT_TOKEN), st.sampled_from(["", "wrong", OPERATOR_TOKEN])),
        node_id=node,
        slots=slots,
        address=f("address", st.sampled_from(["host-1", "10.0.0.7:5000"]), TEXT),
        workers=f("workers", valid_workers, hostile_workers),
        model=pb.ModelShape(
            unit_numel=f("model", st.sampled_from([[], units]), st.lists(INT64, max_size=6))
        ),
        node_secret=f("secret", st.just(""), st.sampled_from([live.secret, "wrong", "x" * 500])),
    )
    _call(live, "Register", request)


FINITE = st.floats(0, 1e4)


@SETTINGS
@given(data=st.data())
def test_heartbeat_never_crashes_and_a_refusal_changes_nothing(
    live: LiveController, data: st.DataObject
) -> None:
    names = ["secret", "node_id", "worker_id", "rank", "generation", "step", "loss", "rate"]
    f = Fields(data, [*names, "time", "wall", "phase", "costs", "held", "committed", "skipped"])
    progress = pb.WorkerProgress(
        worker_id=f("worker_id", st.just("node-a.w0"), WORKERS),
        rank=f("rank", st.integers(-1, 1), INT32),
        generation=f("generation", st.integers(0, 1), INT64),
        step=f("step", st.integers(0, 100), INT64),
        loss=f("loss", FINITE, FLOAT),
        tokens_per_s=f("rate", FINITE, FLOAT),
        step_time_s=f("time", FINITE, FLOAT),
        wall_time=f("wall", FINITE, FLOAT),
        phase=f("phase", st.sampled_from([pb.WORKER_PHASE_RUNNING]), ENUM),
        unit_costs=f(
            "costs",
            st.dictionaries(st.integers(0, 3), FINITE, max_size=3),
            st.dictionaries(INT32, FLOAT, max_size=3),
        ),
        checkpoint_held_s=f("held", FINITE, FLOAT),
        checkpoint_committed_step=f("committed", st.integers(0, 100), INT64),
        checkpoints_skipped=f("skipped", st.integers(0, 100), INT64),
    )
    request = pb.HeartbeatRequest(
        node_secret=f("secret", st.just(live.secret), st.sampled_from(["", "wrong"])),
        node_id=f("node_id", st.just("node-a"), NODES),
        lease_id=data.draw(INT64),
        progress=data.draw(st.sampled_from([[], [progress], [progress, progress]])),
    )
    _call(live, "Heartbeat", request)


@SETTINGS
@given(data=st.data())
def test_report_event_never_crashes_and_a_refusal_changes_nothing(
    live: LiveController, data: st.DataObject
) -> None:
    _call(live, "ReportEvent", _event_report(live, data))


@SETTINGS
@given(data=st.data())
def test_a_batch_of_reports_never_crashes_and_a_refused_batch_changes_nothing(
    live: LiveController, data: st.DataObject
) -> None:
    """Every report is checked before any is handled: one bad report refuses them all."""
    reports = [_event_report(live, data) for _ in range(data.draw(st.integers(1, 3)))]
    batch = pb.EventBatch(node_secret=reports[0].node_secret, node_id=reports[0].node_id)
    for report in reports:
        if data.draw(st.booleans()):  # the batch's node and secret stand for empty ones
            report.ClearField("node_id")
            report.ClearField("node_secret")
        batch.reports.append(report)
    _call(live, "ReportEvents", batch)


def _event_report(live: LiveController, data: st.DataObject) -> pb.EventReport:
    names = ["secret", "node_id", "generation", "kind", "worker_id", "rank", "step", "wall"]
    f = Fields(data, [*names, "detail", "slot", "pid", "loss", "join", "model"])
    units = list(JobConfig().unit_numel())
    return pb.EventReport(
        node_secret=f("secret", st.just(live.secret), st.sampled_from(["", "wrong"])),
        node_id=f("node_id", st.just("node-a"), NODES),
        generation=f("generation", st.integers(0, 1), INT64),
        # a worker that exits is replaced by WORKER_READY of node-a.w1 later on
        kind=f(
            "kind",
            st.sampled_from([pb.WORKER_READY, pb.COLLECTIVE_ERROR, pb.JOINED, pb.RESUMED]),
            ENUM,
        ),
        worker_id=f("worker_id", st.sampled_from(["node-a.w0", "node-a.w1"]), WORKERS),
        rank=f("rank", st.integers(-1, 1), INT32),
        step=f("step", st.integers(0, 100), INT64),
        wall_time=f("wall", FINITE, FLOAT),
        detail=f("detail", st.text(max_size=20), TEXT),
        slot=f("slot", st.integers(0, 1), INT32),
        pid=f("pid", st.integers(1, 10**6), INT32),
        loss=f("loss", FINITE, FLOAT),
        join=f(
            "join",
            st.builds(pb.JoinTimings, join_start=FINITE, reached_step=st.integers(0, 100)),
            st.builds(
                pb.JoinTimings,
                join_start=FLOAT,
                comm_rebuild_s=FLOAT,
                migrate_s=FLOAT,
                reached_step=INT64,
            ),
        ),
        model=pb.ModelShape(unit_numel=f("model", st.just(units), st.lists(INT64, max_size=6))),
    )


@SETTINGS
@given(data=st.data())
def test_admin_and_status_never_crash_and_a_refusal_changes_nothing(
    live: LiveController, data: st.DataObject
) -> None:
    f = Fields(data, ["token", "action", "rank", "node_id", "at_step", "at_generation"])
    token = f("token", st.just(OPERATOR_TOKEN), st.sampled_from([AGENT_TOKEN, "", "wrong"]))
    request = pb.AdminRequest(
        token=token,
        action=f("action", st.sampled_from([pb.KILL_WORKER, pb.KILL_NODE, pb.HANG_WORKER]), ENUM),
        rank=f("rank", st.integers(0, 1), INT32),
        node_id=f("node_id", st.just("node-a"), NODES),
        # far in the future: these orders reach no real process here anyway
        at_step=f("at_step", st.integers(0, 100), INT64),
        at_generation=f("at_generation", st.integers(0, 3), INT64),
    )
    _call(live, "Admin", request)
    _call(live, "Status", pb.StatusRequest(token=token))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(node=NODES, secret=st.sampled_from(["", "wrong", "x" * 1000]))
def test_watch_plan_without_the_node_secret_is_refused(
    live: LiveController, node: str, secret: str
) -> None:
    async def watch() -> None:
        stream = live.session.client.stream(
            "WatchPlan", pb.WatchPlanRequest(node_id=node, node_secret=secret)
        )
        try:
            await asyncio.wait_for(stream.__anext__(), 5)
        finally:
            await stream.aclose()

    before = live.state()
    with pytest.raises(rpc.RpcRejected) as err:
        live.run(watch())
    assert err.value.code in ("INVALID_ARGUMENT", "PERMISSION_DENIED")
    assert live.state() == before
