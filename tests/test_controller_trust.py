"""A hostile or buggy peer against a real controller (gRPC on port 0, embedded store):
each probe of the trust review is refused with the right status, and a refused request
changes nothing, in memory or in the store."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from elastiq import rpc
from elastiq.config import JobConfig
from elastiq.controller.server import Controller, ServerConfig
from elastiq.controller.service import Credentials
from elastiq.controller.store import StoreUnavailable
from elastiq.proto import elastiq_pb2 as pb
from tests.live_controller import (
    AGENT_TOKEN,
    OPERATOR_TOKEN,
    Session,
    planned_one_worker,
    snapshot,
    with_controller,
)

_WORKER_IN_PHASE_42 = pb.WorkerInfo(worker_id="node-a.w0", pid=1, phase=cast(Any, 42))


async def _refused(code: str, call: Any) -> str:
    with pytest.raises(rpc.RpcRejected) as err:
        await call
    assert err.value.code == code, err.value
    return err.value.details


def _memory(controller: Controller) -> tuple[Any, ...]:
    job = controller.job
    assert job is not None
    nodes = {
        n: (s.secret, s.lease, sorted(s.workers), s.address) for n, s in sorted(job.nodes.items())
    }
    progress = [(w.ref.worker_id, w.state, str(w.progress)) for w in job.registry.workers()]
    return nodes, progress, job.phase, job.generation, len(job.events), dict(job.planner.unit_costs)


def test_a_forged_finished_before_the_last_step_does_not_end_the_job() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        before = _memory(controller), await snapshot(controller)
        why = await _refused(
            "FAILED_PRECONDITION",
            session.report(kind=pb.FINISHED, worker_id="node-a.w0", generation=1, step=1),
        )
        assert "the job ends at step 200" in why
        assert controller.job is not None and controller.job.phase == pb.JOB_RUNNING
        assert (_memory(controller), await snapshot(controller)) == before

    with_controller(body, JobConfig(job="trust", steps=200))


@pytest.mark.parametrize(
    "progress,why",
    [
        ({"step": 1 << 62}, "outside the job's steps"),
        ({"loss": float("nan")}, "loss=nan"),
        ({"unit_costs": {1: -0.5}}, "cost of unit 1"),
        ({"unit_costs": {10_000: 0.5}}, "unit 10000 does not exist"),
        ({"generation": 99}, "generation=99"),
        ({"phase": 77}, "unknown phase 77"),
        ({"worker_id": "node-b.w0"}, "a node reports its own workers only"),
    ],
)
def test_a_heartbeat_with_impossible_progress_is_refused_and_recorded_nowhere(
    progress: dict[str, Any], why: str
) -> None:
    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        fields = {"worker_id": "node-a.w0", "generation": 1, "step": 1, **progress}
        before = _memory(controller), await snapshot(controller)
        details = await _refused(
            "INVALID_ARGUMENT", session.heartbeat(progress=[pb.WorkerProgress(**fields)])
        )
        assert why in details
        assert (_memory(controller), await snapshot(controller)) == before
        # and the job still plans: a later membership change is a normal generation
        await session.register("node-b")
        await session.ready_worker("node-b")
        for _ in range(100):
            if controller.job is not None and controller.job.generation == 2:
                break
            await asyncio.sleep(0.05)
        assert controller.job is not None and controller.job.generation == 2

    with_controller(body, JobConfig(job="trust", steps=200))


def test_an_admin_call_with_an_unknown_action_is_refused_and_nothing_is_sent() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        job = controller.job
        assert job is not None
        queued = job.nodes["node-a"].queue.qsize()
        await _refused("INVALID_ARGUMENT", session.admin(action=99, rank=0))
        assert job.nodes["node-a"].queue.qsize() == queued
        assert not any(e.kind == "chaos_requested" for e in job.events)

    with_controller(body)


def test_re_registering_a_live_node_id_without_its_secret_cannot_evict_it() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        before = _memory(controller), await snapshot(controller)
        intruder = Session(f"127.0.0.1:{controller.port}")
        try:
            why = await _refused("ALREADY_EXISTS", intruder.register("node-a"))
            assert "held by a live agent" in why
            await _refused("ALREADY_EXISTS", intruder.register("node-a", node_secret="x" * 43))
        finally:
            await intruder.close()
        assert (_memory(controller), await snapshot(controller)) == before
        # the node itself, with its secret, may register again (its stream broke)
        secret = session.secrets["node-a"]
        reply = await session.register("node-a", node_secret=secret)
        assert reply.node_secret == secret

    with_controller(body)


def test_a_node_can_act_for_itself_only() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        await session.register("node-b")
        before = _memory(controller), await snapshot(controller)
        stolen = session.secrets["node-b"]
        await _refused(
            "PERMISSION_DENIED",
            session.report(
                "node-a", node_secret=stolen, kind=pb.WORKER_EXITED, worker_id="node-a.w0"
            ),
        )
        await _refused(
            "INVALID_ARGUMENT",
            session.report("node-b", kind=pb.WORKER_EXITED, worker_id="node-a.w0"),
        )
        await _refused("PERMISSION_DENIED", session.heartbeat("node-a", node_secret=stolen))
        # an agent's credentials are no operator's
        await _refused("PERMISSION_DENIED", session.status(token=AGENT_TOKEN))
        await _refused("PERMISSION_DENIED", session.admin(token=AGENT_TOKEN, action=pb.KILL_WORKER))
        await _refused("UNAUTHENTICATED", session.status(token=""))
        assert (_memory(controller), await snapshot(controller)) == before

    with_controller(body)


def test_node_secrets_are_long_and_unpredictable() -> None:
    async def body(controller: Controller, session: Session) -> None:
        replies = [await session.register(f"node-{i}") for i in range(4)]
        secrets = {r.node_secret for r in replies}
        assert len(secrets) == 4 and all(len(s) >= 43 for s in secrets)

    with_controller(body)


def test_two_plan_streams_of_one_node_do_not_split_its_directives() -> None:
    """The newest stream gets every directive; the older one is ended."""

    async def body(controller: Controller, session: Session) -> None:
        await session.register()
        secret = session.secrets["node-a"]
        request = pb.WatchPlanRequest(node_id="node-a", node_secret=secret)
        first = session.client.stream("WatchPlan", request)
        first_task = asyncio.ensure_future(first.__anext__())
        await asyncio.sleep(0.2)
        second = session.client.stream("WatchPlan", request)
        second_task = asyncio.ensure_future(second.__anext__())
        await asyncio.sleep(0.2)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(first_task, 5)
        await session.ready_worker()
        directive = await asyncio.wait_for(second_task, 5)
        assert directive.WhichOneof("kind") == "plan"
        await second.aclose()

    with_controller(body)


@pytest.mark.parametrize(
    "fields,why",
    [
        ({"slot": 7}, "slot 7 is outside 0..0"),
        ({"pid": -5}, "pid -5 must be positive"),
        ({"worker_id": "node-a"}, "must be 'node-a.<name>'"),
    ],
)
def test_a_worker_ready_for_a_slot_or_pid_that_cannot_exist_is_refused(
    fields: dict[str, Any], why: str
) -> None:
    async def body(controller: Controller, session: Session) -> None:
        await session.register()
        before = _memory(controller), await snapshot(controller)
        assert why in await _refused("INVALID_ARGUMENT", session.ready_worker(**fields))
        await asyncio.sleep(0.1)
        assert (_memory(controller), await snapshot(controller)) == before
        assert controller.job is not None and controller.job.generation == 0

    with_controller(body)


@pytest.mark.parametrize(
    "node,fields,why",
    [
        ("a/../../x", {}, "node id"),
        ("n:1", {}, "node id"),
        ("node-a", {"address": 'h", "slots": 9'}, "address"),
        ("node-a", {"address": "h" * (3 << 20)}, "address"),
        ("node-a", {"workers": [pb.WorkerInfo(worker_id="node-b.w0", pid=1)]}, "own workers"),
        ("node-a", {"workers": [_WORKER_IN_PHASE_42]}, "phase"),
    ],
)
def test_a_register_with_a_hostile_field_is_refused_and_changes_nothing(
    node: str, fields: dict[str, Any], why: str
) -> None:
    async def body(controller: Controller, session: Session) -> None:
        before = _memory(controller), await snapshot(controller)
        assert why in await _refused("INVALID_ARGUMENT", session.register(node, **fields))
        assert (_memory(controller), await snapshot(controller)) == before

    with_controller(body)


def test_a_register_the_store_refuses_leaves_no_node_in_memory() -> None:
    async def body(controller: Controller, session: Session) -> None:
        assert controller.store is not None

        async def refuse(*args: Any, **kwargs: Any) -> int:
            raise StoreUnavailable("the store refused the write")

        controller.store.put = refuse  # type: ignore[method-assign]
        with pytest.raises(rpc.RpcRetryable) as err:  # the store failed: retry later
            await session.register()
        assert "UNAVAILABLE" in str(err.value)
        assert controller.job is not None and "node-a" not in controller.job.nodes

    with_controller(body)


def test_an_event_kind_the_proto_does_not_define_is_invalid_argument() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await session.register()
        assert "event kind 99" in await _refused(
            "INVALID_ARGUMENT", session.report(kind=99, worker_id="node-a.w0")
        )

    with_controller(body)


def test_a_standby_reveals_the_leader_only_to_an_authenticated_caller(etcd_server: Any) -> None:
    async def body(controller: Controller, session: Session) -> None:
        standby = Controller(
            JobConfig(job="input-test", steps=5),
            controller.control,
            ServerConfig(store=etcd_server.url),
            Credentials(agent_token=AGENT_TOKEN, operator_token=OPERATOR_TOKEN),
        )
        await standby.start(wait_for_leadership=False)
        other = Session(f"127.0.0.1:{standby.port}")
        try:
            for _ in range(50):  # it has read who leads
                if standby.service.leader_address:
                    break
                await asyncio.sleep(0.1)
            leader = f":{controller.port}"
            assert leader not in await _refused(
                "PERMISSION_DENIED", other.register(token="wrong-token-0123456789")
            )
            assert leader not in await _refused_retryable(other.heartbeat("node-a"))
            assert leader in await _refused_retryable(other.status())
        finally:
            await other.close()
            await standby.stop()

    with_controller(body, server=ServerConfig(store=etcd_server.url))


async def _refused_retryable(call: Any) -> str:
    with pytest.raises(rpc.RpcRetryable) as err:
        await call
    assert "UNAVAILABLE" in str(err.value)
    return str(err.value)


def test_a_controller_without_credentials_refuses_to_start_unless_told_insecure() -> None:
    with pytest.raises(ValueError, match="--insecure"):
        Credentials()
    with pytest.raises(ValueError, match="must differ"):
        Credentials(agent_token="a" * 20, operator_token="a" * 20)
    assert Credentials(insecure=True).insecure


def _listening_addresses(port: int) -> set[str]:
    """Local addresses listening on `port`, from the kernel's own tables."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table, encoding="ascii") as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add("any" if int(address, 16) == 0 else address[:width])
    return found


def test_the_rendezvous_store_and_metrics_listen_on_loopback_only() -> None:
    async def body(controller: Controller, session: Session) -> None:
        assert controller.job is not None
        rendezvous_port = int(controller.job.rendezvous.rsplit(":", 1)[1])
        loopback = {"0100007F"}  # 127.0.0.1, as /proc/net/tcp writes it
        assert _listening_addresses(rendezvous_port) == loopback
        assert _listening_addresses(controller.metrics_port) == loopback

    with_controller(body)
