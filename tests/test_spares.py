"""Spares against a real controller (gRPC on port 0, embedded store): a worker beyond
max_workers waits, even when it becomes ready before any generation completed."""

from __future__ import annotations

import asyncio

from elastiq import rpc
from elastiq.config import JobConfig
from elastiq.controller.job import ControllerConfig
from elastiq.controller.server import Controller, ServerConfig
from tests.test_controller_input import TOKEN, ready_worker, register


def test_a_spare_ready_before_the_first_generation_completes_displaces_no_member() -> None:
    """node-b and node-c make generation 1; node-a (first in sort order) is ready
    later, while nobody has finished joining. Planning afresh must keep b and c."""

    async def main() -> None:
        controller = Controller(
            JobConfig(job="spare-test", steps=5),
            ControllerConfig(
                token=TOKEN, min_workers=2, max_workers=2, settle_s=0.0, coalesce_s=0.0
            ),
            ServerConfig(metrics_port=0),
        )
        await controller.start()
        client = rpc.ControllerClient(f"127.0.0.1:{controller.port}")
        try:
            for node in ("node-b", "node-c"):
                await register(client, node)
                await ready_worker(client, node)
            job = controller.job
            assert job is not None
            for _ in range(100):
                if job.generation == 1:
                    break
                await asyncio.sleep(0.05)
            first = job.layout.worker_ids() if job.layout is not None else []
            assert first == ["node-b.w0", "node-c.w0"]
            await register(client, "node-a")
            await ready_worker(client, "node-a")
            await asyncio.sleep(0.5)  # a replan, if any, is planned at once
            assert job.layout is not None and job.layout.worker_ids() == first
            assert job.generation == 1
        finally:
            await client.close()
            await controller.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
