"""What a job waiting for its first generation says, and when it gives up (issue 17):
pure logic first, then the start against a live controller in this process (gRPC on
port 0, the embedded store)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from elastiq.agent.agent import AgentConfig
from elastiq.child_processes import child_pids, is_stopped
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.controller.job_state import ControllerConfig
from elastiq.controller.server import Controller
from elastiq.controller.start_wait import NodeReadiness, StartWait, describe_wait, duration
from elastiq.proto import elastiq_pb2 as pb
from tests.live_controller import Session, with_controller


def test_durations_read_like_a_person_writes_them() -> None:
    assert [duration(s) for s in (0, 45, 80, 3600 + 180)] == ["0s", "45s", "1m20s", "1h03m"]


def test_the_wait_names_what_it_waits_for_and_the_lagging_node() -> None:
    nodes = [
        NodeReadiness("node0", 2, 2, 250.0),
        NodeReadiness("node1", 2, 2, 249.0),
        NodeReadiness("node2", 2, 0, 240.0),
    ]
    line = describe_wait(6, 80.0, nodes)
    assert line.startswith("4 of 6 workers ready, minimum 6, waiting 1m20s")
    assert "node2: 0 of 2 ready, registered 4m00s ago" in line
    assert "node0" not in line and "lower --min-workers" not in line


def test_a_minimum_the_registered_nodes_cannot_reach_says_what_to_do() -> None:
    line = describe_wait(6, 10.0, [NodeReadiness("node0", 2, 2, 9.0)])
    assert "run 2 workers in all, fewer than the minimum" in line
    assert "start more nodes or lower --min-workers" in line


def test_no_node_at_all_is_said_as_such_and_after_a_while_what_to_check() -> None:
    assert describe_wait(2, 3.0, []).endswith("no node has registered yet")
    assert "are the agents running" in describe_wait(2, 30.0, [])


def test_events_come_when_the_wait_starts_and_every_minute_after() -> None:
    wait = StartWait(min_workers=2, timeout_s=0, began=100.0)
    ticks = [wait.tick(t, []) for t in (100.0, 101.0, 159.0, 160.0, 161.0, 221.0)]
    assert [t.event for t in ticks] == [True, False, False, True, False, True]
    assert not any(t.give_up for t in ticks)  # timeout 0: waits for ever


def test_the_start_timeout_fails_the_job_with_the_wait_and_the_remedy() -> None:
    wait = StartWait(min_workers=3, timeout_s=300.0, began=0.0)
    nodes = [NodeReadiness("node0", 2, 2, 299.0)]
    assert not wait.tick(299.0, nodes).give_up
    tick = wait.tick(300.0, nodes)
    assert tick.give_up.startswith("no generation formed within the start timeout (5m00s)")
    assert "2 of 2 workers ready, minimum 3" in tick.give_up
    assert "raise --start-timeout" in tick.give_up


def test_many_lagging_nodes_are_summed_up_not_listed() -> None:
    nodes = [NodeReadiness(f"node{i}", 1, 0, float(i)) for i in range(9)]
    line = describe_wait(9, 5.0, nodes)
    assert line.count("ready, registered") == 5 and "4 more node(s) not ready" in line
    assert "node8:" in line  # the longest-waiting first


# -- the start itself, against a live controller in this process -----------------------


async def _generation_after(controller: Controller, seconds: float) -> int:
    await asyncio.sleep(seconds)
    assert controller.job is not None
    return controller.job.generation


def test_the_settle_ends_as_soon_as_every_registered_worker_is_ready() -> None:
    """min 1 of 2: the first ready worker starts the settle (30 s here); the second
    ending it at once, the job plans both without waiting out the settle."""

    async def body(controller: Controller, session: Session) -> None:
        await session.register("node-a")
        await session.register("node-b")
        await session.ready_worker("node-a")
        assert await _generation_after(controller, 0.5) == 0  # settling: node-b may come
        await session.ready_worker("node-b")
        assert await _generation_after(controller, 0.5) == 1
        assert controller.job is not None and controller.job.layout is not None
        assert controller.job.layout.world_size == 2

    with_controller(body, min_workers=1, settle_s=30.0, lease_ttl_s=30.0)


def test_the_job_starts_with_the_minimum_once_the_settle_has_passed() -> None:
    async def body(controller: Controller, session: Session) -> None:
        await session.register("node-a")
        await session.register("node-b")
        await session.ready_worker("node-a")
        assert await _generation_after(controller, 0.3) == 0
        assert await _generation_after(controller, 1.2) == 1  # node-b never came
        status = await session.status()
        assert status.waiting_for == "" and status.plan.world_size == 1

    with_controller(body, min_workers=1, settle_s=1.0, lease_ttl_s=30.0)


def test_a_worker_lost_while_settling_puts_the_start_back_to_waiting() -> None:
    async def body(controller: Controller, session: Session) -> None:
        for node in ("node-a", "node-b", "node-c"):  # the settle waits for all three
            await session.register(node)
        await session.ready_worker("node-a")
        await session.ready_worker("node-b")
        await session.report("node-b", kind=pb.WORKER_EXITED, worker_id="node-b.w0", slot=0)
        assert await _generation_after(controller, 1.5) == 0  # 1 ready, minimum 2
        status = await session.status()
        assert status.waiting_for.startswith("1 of 3 workers ready, minimum 2")
        await session.ready_worker("node-c")
        assert await _generation_after(controller, 1.5) == 1

    with_controller(body, min_workers=2, settle_s=0.5, lease_ttl_s=30.0)


# -- the start's settings refuse what cannot work, saying why --------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ControllerConfig(start_timeout_s=-1), "start_timeout_s=-1"),
        (lambda: LocalRunConfig(workers=4, min_workers=5), "min_workers=5 must be in 0..workers=4"),
        (lambda: LocalRunConfig(workers=4, min_workers=3, max_workers=2), "below the workers"),
        (lambda: LocalRunConfig(start_retries=101), "start_retries=101"),
        (lambda: LocalRunConfig(start_timeout_s=-5), "start_timeout_s must be >= 0"),
        (lambda: AgentConfig(controllers=["h:1"], start_retries=-1), "start_retries=-1"),
        (lambda: AgentConfig(controllers=["h:1"], contact_timeout_s=0), "must be positive"),
    ],
)
def test_impossible_start_settings_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_proc_tells_a_stopped_child_from_a_running_one() -> None:
    """elastiq.child_processes reads /proc: the children of a process, and whether one
    is stopped (the agent's watchdog uses it before a worker's first word)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in child_pids(os.getpid())
        assert not is_stopped(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        for _ in range(100):  # the state changes once the signal is delivered
            if is_stopped(child.pid):
                break
            time.sleep(0.01)
        assert is_stopped(child.pid)
    finally:
        child.kill()
        child.wait(5)
    assert not is_stopped(child.pid) and child.pid not in child_pids(os.getpid())
