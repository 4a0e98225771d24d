"""Failures before the first step (issue 17): a job must never wait for ever without
saying why.

Real controller and agent processes on loopback; the faults are real signals sent by
pid, as a user sends them from outside, before any generation has formed: a worker
SIGKILLed, another SIGSTOPped, an agent SIGKILLed (and started again, as Kubernetes
restarts a crashed pod). Then the job must start and finish on its own. A minimum
that can never be met must fail the job within its start timeout, saying what it
waited for, and `elastiq status` must show the wait while it lasts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from elastiq.child_processes import child_pids
from elastiq.proto import elastiq_pb2 as pb
from tests.cluster import Cluster

pytestmark = pytest.mark.slow


def _worker_pid(agent: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """The pid of the agent's worker as soon as it is started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = child_pids(agent.pid)
        if kids:
            return kids[0]
        time.sleep(0.01)
    raise TimeoutError(f"agent {agent.pid} started no worker in {timeout}s")


def _events(status: pb.StatusResponse, kind: str) -> list[str]:
    return [e.message for e in status.events if e.kind == kind]


def test_workers_and_an_agent_lost_before_the_first_step_heal_and_the_job_finishes(
    tmp_path: object,
) -> None:
    cluster = Cluster(str(tmp_path), job={"steps": 20, "pipeline-stages": 2, "zero": 1})
    try:
        cluster.start_controller(min_workers=4, settle=1.0)
        agents = {f"node{i}": cluster.start_agent(f"node{i}") for i in range(4)}
        stopped = _worker_pid(agents["node1"])
        os.kill(stopped, signal.SIGSTOP)  # before it can report ready: the start stalls
        os.kill(_worker_pid(agents["node0"]), signal.SIGKILL)
        agents["node2"].send_signal(signal.SIGKILL)
        agents["node2"].wait(10)
        assert cluster.status().generation == 0, "the faults came too late to test a start"
        cluster.start_agent("node2")  # the pod restarted

        waiting = cluster.wait_for(
            "the wait to be reported", lambda s: bool(_events(s, "waiting")), 30
        )
        assert "minimum 4" in _events(waiting, "waiting")[0]
        end = cluster.wait_for(
            "the job to finish", lambda s: s.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED), 180
        )
        assert end.phase == pb.JOB_SUCCEEDED, end.events
        assert end.step == 20
        restarting = " | ".join(_events(end, "worker_restarting"))
        assert "node0.w0: starting slot 0 again in 1s (restart 1 of 3)" in restarting
        assert "died before its first plan (signal 9)" in restarting
        assert "node1.w0: starting slot 0 again" in restarting
        hung = " | ".join(_events(end, "worker_hung"))
        assert "node1.w0: killed by the watchdog: stopped for" in hung
        first_plan = next(e for e in end.events if e.kind == "plan")
        assert "generation 1: 4 workers" in first_plan.message
        members = {m.worker_id for m in end.members if m.rank >= 0}
        assert {"node0.w0-r1", "node1.w0-r1"} <= members
        with pytest.raises(ProcessLookupError):
            os.kill(stopped, 0)  # the stopped process was killed, not left behind
    finally:
        cluster.close()


def test_a_minimum_that_is_never_met_fails_the_job_within_the_start_timeout(
    tmp_path: object,
) -> None:
    cluster = Cluster(str(tmp_path), job={"steps": 5})
    try:
        cluster.start_controller(min_workers=3, start_timeout=8.0)
        agent = cluster.start_agent("node0", slots=2)
        cluster.wait_for("two workers ready", lambda s: "2 of 2 workers ready" in s.waiting_for, 60)
        shown = subprocess.run(
            [sys.executable, "-m", "elastiq.cli", "status", "--controller", cluster.address],
            env=cluster.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert "waiting: 2 of 2 workers ready, minimum 3, waiting" in shown
        assert "start more nodes or lower --min-workers" in shown
        end = cluster.wait_for("the job to fail", lambda s: s.phase == pb.JOB_FAILED, 30)
        failed = _events(end, "failed")[-1]  # the status repeats the job's failure last
        assert failed.startswith("no generation formed within the start timeout (8s)")
        assert "2 of 2 workers ready, minimum 3" in failed and "raise --start-timeout" in failed
        assert agent.wait(30) is not None  # told the job failed, the agent leaves
    finally:
        cluster.close()
