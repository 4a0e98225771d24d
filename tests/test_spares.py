"""Spares against a real controller (gRPC on port 0, embedded store): a worker beyond
max_workers waits, even when it becomes ready before any generation completed."""

from __future__ import annotations

import asyncio

from elastiq.config import JobConfig
from elastiq.controller.server import Controller
from tests.live_controller import Session, with_controller


def test_a_spare_ready_before_the_first_generation_completes_displaces_no_member() -> None:
    """node-b and node-c make generation 1; node-a (first in sort order) is ready
    later, while nobody has finished joining. Planning afresh must keep b and c."""

    async def body(controller: Controller, session: Session) -> None:
        for node in ("node-b", "node-c"):
            await session.register(node)
            await session.ready_worker(node)
        job = controller.job
        assert job is not None
        for _ in range(100):
            if job.generation == 1:
                break
            await asyncio.sleep(0.05)
        first = job.layout.worker_ids() if job.layout is not None else []
        assert first == ["node-b.w0", "node-c.w0"]
        await session.register("node-a")
        await session.ready_worker("node-a")
        await asyncio.sleep(0.5)  # a replan, if any, is planned at once
        assert job.layout is not None and job.layout.worker_ids() == first
        assert job.generation == 1

    with_controller(body, JobConfig(job="spare-test", steps=5), min_workers=2, max_workers=2)
