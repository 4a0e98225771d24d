"""Leader lease lifecycle of a real controller (gRPC on port 0, embedded store)."""

from __future__ import annotations

import asyncio

from elastiq.config import JobConfig
from elastiq.controller.server import Controller
from tests.live_controller import Session, planned_one_worker, with_controller


def test_a_controller_whose_lease_expired_reclaims_the_lead_and_keeps_its_job() -> None:
    """A stall or a store outage longer than the lease TTL costs the lease; with the
    key free and the plan unchanged, the same controller leads on, losing nothing."""

    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        assert controller._lead is not None and controller.store is not None
        first, lease = controller.job, controller._lead.lease
        await controller.store.revoke_lease(lease)  # what an expired TTL does
        for _ in range(100):
            if controller._lead.lease != lease:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the controller never reclaimed the leader key")
        assert controller.job is first, "the job (its events, recoveries) must be kept"
        leader = await controller.store.get("/elastiq/lease-test/leader")
        assert leader is not None and leader.value.decode().endswith(f":{controller.port}")
        assert leader.lease == controller._lead.lease

    with_controller(
        body, JobConfig(job="lease-test", steps=5), lease_ttl_s=1.0, heartbeat_interval_s=0.2
    )


def test_a_controller_that_lost_the_plan_to_another_steps_down_and_leads_again_from_the_store() -> (
    None
):
    """If the plan changed while the lease was gone, another controller led meanwhile:
    this one must not reclaim; it competes again and takes over from the store."""

    async def body(controller: Controller, session: Session) -> None:
        await planned_one_worker(controller, session)
        assert controller._lead is not None and controller.store is not None
        first = controller.job
        assert first is not None and first.plan is not None
        await controller.store.revoke_lease(controller._lead.lease)
        await controller.store.put("/elastiq/lease-test/plan", first.plan.SerializeToString())
        for _ in range(100):
            job = controller.job
            if job is not None and job is not first:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the controller never led again")
        assert job.takeover and job.generation == 1

    with_controller(
        body, JobConfig(job="lease-test", steps=5), lease_ttl_s=1.0, heartbeat_interval_s=0.2
    )
