"""Bad input against a real controller (gRPC on port 0, embedded store): every
refusal says what was wrong, and nothing in the store changes."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from elastiq import rpc
from elastiq.config import JobConfig
from elastiq.controller.server import Controller
from elastiq.proto import elastiq_pb2 as pb
from tests.live_controller import Session, planned_one_worker, snapshot, with_controller


def test_wrong_token_is_permission_denied_and_the_agent_is_not_added() -> None:
    async def body(controller: Controller, session: Session) -> None:
        before = await snapshot(controller)
        with pytest.raises(rpc.RpcRejected) as err:
            await session.register(token="wrong-token-0123456789")
        assert err.value.code == "PERMISSION_DENIED" and "token" in err.value.details
        assert controller.job is not None and "node-a" not in controller.job.nodes
        assert await snapshot(controller) == before

    with_controller(body)


def test_unknown_node_and_malformed_ids_are_invalid_argument() -> None:
    async def body(controller: Controller, session: Session) -> None:
        before = await snapshot(controller)
        with pytest.raises(rpc.RpcRejected) as err:
            await session.report("ghost", kind=pb.WORKER_EXITED, worker_id="ghost.w0")
        assert (
            err.value.code == "INVALID_ARGUMENT" and "unknown node id 'ghost'" in err.value.details
        )
        with pytest.raises(rpc.RpcRejected) as err:
            await session.register("bad id!")
        assert err.value.code == "INVALID_ARGUMENT" and "node id" in err.value.details
        with pytest.raises(rpc.RpcRejected) as err:
            await session.register("n", slots=0)
        assert err.value.code == "INVALID_ARGUMENT" and "slots=0" in err.value.details
        assert await snapshot(controller) == before

    with_controller(body)


def test_out_of_range_rank_is_invalid_argument_and_changes_nothing() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        before = await snapshot(controller)
        with pytest.raises(rpc.RpcRejected) as err:
            await session.admin(action=pb.KILL_WORKER, rank=7)
        assert err.value.code == "INVALID_ARGUMENT"
        assert "rank 7 is out of range: the current plan has 1 rank(s)" in err.value.details
        assert await snapshot(controller) == before

    with_controller(body)


def test_a_report_from_an_older_generation_is_ignored() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        job = controller.job
        assert job is not None and job.generation == 1
        before = await snapshot(controller)
        ack = await session.report(kind=pb.FINISHED, worker_id="node-a.w0", generation=0, step=5)
        assert not ack.accepted and "stale generation 0 < current 1" in ack.reason
        assert job.phase == pb.JOB_RUNNING, "a stale FINISHED must not end the job"
        assert await snapshot(controller) == before

    with_controller(body)


def test_metrics_are_served_with_the_elastiq_prefix() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await session.register()
        await session.ready_worker()
        await asyncio.sleep(0.3)
        with pytest.raises(rpc.RpcRejected):
            await session.register(token="nope")
        url = f"http://127.0.0.1:{controller.metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        assert "elastiq_generation 1.0" in text
        assert "elastiq_members 1.0" in text
        assert 'elastiq_rejected_requests_total{reason="token"} 1.0' in text

    with_controller(body)


def test_a_worker_that_reports_no_model_shape_is_invalid_argument() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await session.register()
        before = await snapshot(controller)
        with pytest.raises(rpc.RpcRejected) as err:
            await session.ready_worker(model=pb.ModelShape())
        assert err.value.code == "INVALID_ARGUMENT"
        assert "reports no model shape" in err.value.details
        with pytest.raises(rpc.RpcRejected) as err:
            await session.ready_worker(model=pb.ModelShape(unit_numel=[16, -1, 16]))
        assert err.value.code == "INVALID_ARGUMENT" and "[-1]" in err.value.details
        assert controller.job is not None and not controller.job.nodes["node-a"].workers
        assert await snapshot(controller) == before

    with_controller(body)


def test_a_worker_that_built_another_model_is_refused_and_not_planned() -> None:
    """The controller plans with the shape the first ready worker reported (it never
    imports the model); a worker whose model differs cannot train with the others."""

    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        job = controller.job
        assert job is not None
        await session.register("node-b")
        other = list(JobConfig().unit_numel())
        other[1] += 1
        ack = await session.ready_worker("node-b", model=pb.ModelShape(unit_numel=other))
        assert not ack.accepted and "every worker must build the same model" in ack.reason
        await asyncio.sleep(0.2)
        assert job.generation == 1 and not job.nodes["node-b"].workers
        assert any(e.kind == "worker_refused" for e in job.status().events)
        with pytest.raises(rpc.RpcRejected) as err:
            await session.register("node-c", model=pb.ModelShape(unit_numel=other))
        assert err.value.code == "FAILED_PRECONDITION" and "same model" in err.value.details
        assert "node-c" not in job.nodes

    with_controller(body)
