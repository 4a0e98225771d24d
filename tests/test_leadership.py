"""Leader lease lifecycle of a real controller (gRPC on port 0, embedded store)."""

from __future__ import annotations

import asyncio

from elastiq import rpc
from elastiq.config import JobConfig
from elastiq.controller.job import ControllerConfig
from elastiq.controller.server import Controller, ServerConfig
from tests.test_controller_input import TOKEN, planned_one_worker


def test_a_controller_that_loses_its_lease_competes_again_and_takes_the_job_back() -> None:
    """A stall longer than the lease TTL (seen once: a slow first torch import) costs
    the lease; with no other controller, this one must lead again, from the store."""

    async def main() -> None:
        controller = Controller(
            JobConfig(job="lease-test", steps=5),
            ControllerConfig(
                token=TOKEN,
                min_workers=1,
                settle_s=0.0,
                coalesce_s=0.0,
                lease_ttl_s=1.0,
                heartbeat_interval_s=0.2,
            ),
            ServerConfig(),
        )
        await controller.start()
        client = rpc.ControllerClient(f"127.0.0.1:{controller.port}")
        try:
            await planned_one_worker(controller, client)
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
        finally:
            await client.close()
            await controller.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
