"""The agent's restart rules (issue 17), wired with stand-in processes: which worker
is started again, after what back-off, with what report, and which never is.

The whole start with real workers, signals and a controller is in
test_start_faults.py; here each rule is checked on its own, in milliseconds, or (the
watchdog) in a second or two against a real process that never says a word.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

from elastiq.agent.agent import Agent, AgentConfig
from elastiq.agent.workers import WorkerProcess
from elastiq.proto import elastiq_pb2 as pb


class _Proc:
    """A process that is still running, as far as the agent can tell."""

    pid = 4242

    def poll(self) -> int | None:
        return None

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def send_signal(self, sig: int) -> None:
        pass


class _Pipe:
    """The agent's end of a worker's pipe, keeping what is sent."""

    def __init__(self) -> None:
        self.sent: list[pb.ToWorker] = []

    def send(self, message: pb.ToWorker) -> bool:
        self.sent.append(message)
        return True


def _agent(**config: Any) -> Agent:
    return Agent(AgentConfig(controllers=["127.0.0.1:1"], node_id="node-a", **config))


def _worker(agent: Agent, worker_id: str = "node-a.w0", planned: bool = False) -> WorkerProcess:
    w = WorkerProcess(worker_id, 0, _Proc(), _Pipe())  # type: ignore[arg-type]
    w.planned = planned
    agent.workers[worker_id] = w
    return w


def _reports(agent: Agent) -> list[pb.EventReport]:
    out = []
    while not agent.outbox.empty():
        out.append(agent.outbox.get_nowait())
    return out


def test_a_worker_lost_before_its_first_plan_is_restarted_with_a_growing_back_off() -> None:
    agent = _agent(max_restarts=0, start_retries=3)
    delays = []
    for attempt in range(4):
        w = _worker(agent, f"node-a.w0-r{attempt}" if attempt else "node-a.w0")
        w.phase = pb.WORKER_PHASE_GONE
        agent._plan_restart(w, -9, 100.0)
        if 0 in agent._respawn_at:
            delays.append(agent._respawn_at.pop(0) - 100.0)
    assert delays == [1.0, 2.0, 4.0]  # max_restarts=0 does not stop a start from healing
    reports = _reports(agent)
    assert [r.kind for r in reports] == [pb.WORKER_RESTARTING] * 4
    details = [r.detail for r in reports]
    assert details[0] == (
        "starting slot 0 again in 1s (restart 1 of 3): it died before its first plan (signal 9)"
    )
    assert details[3] == "not restarted: died before its first plan 4 times (start_retries=3)"


def test_a_worker_that_trained_follows_max_restarts() -> None:
    agent = _agent(max_restarts=0, start_retries=3)
    w = _worker(agent, planned=True)
    w.phase = pb.WORKER_PHASE_GONE
    agent._plan_restart(w, 1, 100.0)
    assert not agent._respawn_at and not _reports(agent)  # a lost member is the job's to heal


def test_a_worker_that_cannot_start_is_never_retried() -> None:
    agent = _agent(start_retries=3)
    w = _worker(agent)
    agent._on_worker_message(w, pb.FromWorker(start_failed=pb.WorkerProblem(detail="bad data")))
    w.phase = pb.WORKER_PHASE_GONE
    agent._plan_restart(w, 2, 100.0)
    assert not agent._respawn_at
    assert [r.kind for r in _reports(agent)] == [pb.START_FAILED]


class _Refusing:
    """A controller that refuses every WORKER_READY, as it does for another model."""

    async def call(self, method: str, request: Any) -> Any:
        return pb.EventAcks(
            acks=[pb.EventAck(accepted=False, reason="another model") for _ in request.reports]
        )


def test_a_worker_the_controller_refuses_is_stopped_and_not_started_again() -> None:
    async def main() -> None:
        agent = _agent(start_retries=3)
        agent.client = _Refusing()  # type: ignore[assignment]
        w = _worker(agent)
        agent.report(pb.WORKER_READY, w, "ready")
        sender = asyncio.ensure_future(agent._sender())
        try:
            await asyncio.sleep(0.2)
        finally:
            sender.cancel()
        pipe = w.channel
        assert isinstance(pipe, _Pipe)
        assert [m.WhichOneof("kind") for m in pipe.sent] == ["shutdown"]
        w.phase = pb.WORKER_PHASE_GONE
        agent._plan_restart(w, 0, 100.0)
        assert not agent._respawn_at

    asyncio.run(main())


def _silent_process(
    worker_id: str, slot: int, read_fd: int, write_fd: int
) -> subprocess.Popen[bytes]:
    """A worker process that never says a word (stuck before its first message)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _supervised(agent: Agent, seconds: float, while_running: Any = None) -> list[pb.EventReport]:
    """Start slot 0's worker (a silent process) and run the agent's watchdog for
    `seconds`; returns what the agent reported. Every process started is killed."""

    async def main() -> list[pb.EventReport]:
        agent._loop = asyncio.get_running_loop()
        agent._launcher = lambda: _silent_process  # type: ignore[method-assign]
        agent._start_worker(0)
        first = next(iter(agent.workers.values()))
        if while_running is not None:
            while_running(first)
        watchdog = asyncio.ensure_future(agent._supervise())
        try:
            await asyncio.sleep(seconds)
        finally:
            agent.done.set()
            await watchdog
            for w in agent.workers.values():
                w.signal(signal.SIGKILL)
                w.proc.wait(5)
        return _reports(agent)

    return asyncio.run(main())


def test_a_worker_that_never_says_a_word_is_killed_after_the_contact_timeout() -> None:
    agent = _agent(contact_timeout_s=1.0, liveness_timeout_s=30.0, start_retries=1)
    reports = _supervised(agent, 2.0)
    kinds = [r.kind for r in reports]
    assert kinds[:2] == [pb.WORKER_HUNG, pb.WORKER_RESTARTING], reports
    assert (
        "killed by the watchdog: said nothing in the 1s since it was started" in reports[0].detail
    )


def test_a_worker_stopped_before_its_first_word_is_killed_within_the_liveness_timeout() -> None:
    agent = _agent(contact_timeout_s=60.0, liveness_timeout_s=0.5, start_retries=0)
    reports = _supervised(agent, 1.5, lambda w: os.kill(w.pid, signal.SIGSTOP))
    (hung,) = [r for r in reports if r.kind == pb.WORKER_HUNG]
    assert hung.detail.startswith("killed by the watchdog: stopped for 0.")
    assert "before its first word" in hung.detail


def test_a_chaos_kill_is_reported_with_the_exit_it_causes() -> None:
    """The injection is held until the exit it causes, and both are queued together,
    in order, so they reach the controller in one batch: sent alone, the injection's
    round trip held the exit report back (detect was 45-90 ms of a recovery). The
    failure is still timed from the kill."""
    agent = _agent(contact_timeout_s=60.0, liveness_timeout_s=60.0, start_retries=0)
    queued_at_kill: list[int] = []

    def kill_now(w: WorkerProcess) -> None:
        agent._inject(pb.ChaosCommand(action=pb.KILL_WORKER, worker_id=w.worker_id, id="c1"))
        queued_at_kill.append(agent.outbox.qsize())

    started = time.time()
    reports = _supervised(agent, 1.0, kill_now)
    assert queued_at_kill == [0]
    assert [r.kind for r in reports][:2] == [pb.CHAOS_INJECTED, pb.WORKER_EXITED], reports
    injected, exited = reports[:2]
    assert injected.detail == "kill-worker" and exited.detail == "exited with code -9"
    assert started <= injected.wall_time <= exited.wall_time
