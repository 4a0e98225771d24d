"""Leader lease lifecycle of a real controller (gRPC on port 0, embedded store)."""

from __future__ import annotations

import asyncio

from elastiq.config import JobConfig
from elastiq.controller.server import Controller
from tests.live_controller import Session, planned_one_worker, with_controller


def test_a_controller_that_loses_its_lease_competes_again_and_takes_the_job_back() -> None:
    """A stall longer than the lease TTL (seen once: a slow first torch import) costs
    the lease; with no other controller, this one must lead again, from the store."""

    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        first, lease = controller.job, controller._leader_lease
        assert controller.store is not None and first is not None
        await controller.store.revoke_lease(lease)  # what an expired TTL does
        for _ in range(100):
            job = controller.job
            if job is not None and job is not first:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the controller never led the job again")
        assert controller._leader_lease != lease
        assert job.generation >= 1, "the new term must resume from the stored plan"
        leader = await controller.store.get("/elastiq/lease-test/leader")
        assert leader is not None and leader.value.decode().endswith(f":{controller.port}")

    with_controller(
        body, JobConfig(job="lease-test", steps=5), lease_ttl_s=1.0, heartbeat_interval_s=0.2
    )
