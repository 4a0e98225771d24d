"""The agent as a sidecar: workers run in the training container's `elastiq worker-host`,
started through the agent's Unix socket. Real processes: controller, agents, hosts and
workers; faults are real signals (docs/design.md, "Kubernetes")."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from elastiq.agent.host_link import HostLink
from elastiq.proto import elastiq_pb2 as pb
from tests.cluster import OPERATOR_TOKEN, Cluster, planned


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def cluster(tmp_path: object) -> Iterator[Cluster]:
    c = Cluster(str(tmp_path), job={"steps": 60})
    try:
        yield c
    finally:
        c.close()


def _pod(cluster: Cluster, name: str, socket_dir: str) -> str:
    path = os.path.join(socket_dir, f"{name}.sock")
    cluster.start_agent(name, worker_socket=path, max_restarts=1)
    cluster.start_worker_host(f"{name}-host", path)
    return path


@pytest.mark.slow
def test_workers_run_in_the_worker_host_and_survive_a_kill_through_it(
    cluster: Cluster, tmp_path: object
) -> None:
    cluster.job["step-delay"] = 0.1  # room for the restarted worker to join
    cluster.start_controller(min_workers=3)
    for i in range(3):
        _pod(cluster, f"pod{i}", str(tmp_path))
    before = cluster.wait_for("the first step", lambda s: s.generation >= 1 and s.step >= 1, 90)
    pids = planned(before)
    hosts = {cluster.hosts[f"pod{i}-host"].pid for i in range(3)}
    # each worker is a child of its pod's worker host, not of the agent
    assert {_parent_of(pid) for pid in pids.values()} == hosts
    victim = before.plan.assignments[1].worker_id
    reply = cluster.call(
        "Admin", pb.AdminRequest(token=OPERATOR_TOKEN, action=pb.KILL_WORKER, rank=1, at_step=10)
    )
    assert reply.accepted
    end = cluster.wait_for(
        "the job to finish", lambda s: s.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED), 180
    )
    assert end.phase == pb.JOB_SUCCEEDED, end
    assert end.recoveries and end.recoveries[0].lost_steps == 0
    survivors = planned(end)
    assert all(survivors[w] == p for w, p in pids.items() if w != victim)
    # the killed worker's slot was started again in its host, as a newcomer
    assert any(w.startswith(victim.split(".")[0]) and w != victim for w in survivors), survivors
    # the pod completes: every training container exits 0 with the job
    for i in range(3):
        assert cluster.hosts[f"pod{i}-host"].wait(30) == 0


@pytest.mark.slow
def test_a_restarted_training_container_rejoins_as_a_newcomer(
    cluster: Cluster, tmp_path: object
) -> None:
    cluster.job["step-delay"] = 0.1
    cluster.start_controller(min_workers=2)
    _pod(cluster, "pod0", str(tmp_path))
    path = _pod(cluster, "pod1", str(tmp_path))
    before = cluster.wait_for("the first step", lambda s: s.generation >= 1 and s.step >= 1, 90)
    host = cluster.hosts["pod1-host"]
    host.send_signal(signal.SIGKILL)  # the training container dies; its worker with it
    host.wait(10)
    cluster.wait_for("a generation without pod1", lambda s: s.generation > before.generation, 60)
    cluster.start_worker_host("pod1-host-again", path)
    back = cluster.wait_for(
        "pod1's newcomer in a plan", lambda s: len(planned(s)) == 2 and s.generation >= 3, 90
    )
    newcomer = [w for w in planned(back) if w.startswith("pod1.")]
    assert newcomer and newcomer[0] not in planned(before), planned(back)
    end = cluster.wait_for(
        "the job to finish", lambda s: s.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED), 180
    )
    assert end.phase == pb.JOB_SUCCEEDED, end


def test_the_worker_host_obeys_only_the_allowed_signals(tmp_path: object) -> None:
    """A worker waiting for its config is signalled through the link: SIGUSR1 is
    refused (the process lives on), SIGKILL kills it and the exit comes back."""
    link = HostLink(os.path.join(str(tmp_path), "agent.sock"))
    env = {**os.environ, "ELASTIQ_AGENT_SOCKET": link.path}
    host = subprocess.Popen(
        [sys.executable, "-m", "elastiq.cli", "worker-host"], env=env, stdin=subprocess.DEVNULL
    )
    try:
        assert link.wait_connected(30)
        assert oct(os.stat(link.path).st_mode & 0o777) == oct(0o600)
        r, w = os.pipe()
        r2, w2 = os.pipe()
        proc = link.launch("pod.w0", 0, r, w2)
        os.close(r)
        os.close(w2)
        assert proc.pid > 0 and _parent_of(proc.pid) == host.pid
        link.signal("pod.w0", signal.SIGUSR1)
        time.sleep(0.5)
        assert proc.poll() is None and os.path.exists(f"/proc/{proc.pid}")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        link.finish(0)
        assert host.wait(15) == 0
        os.close(w)
        os.close(r2)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(5)
        link.close()


def _fake_host(path: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(path)
    return conn


def _dropped(conn: socket.socket) -> bool:
    conn.settimeout(5)
    try:
        return conn.recv(1024) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def test_a_hostile_worker_host_is_dropped_and_changes_nothing(tmp_path: object) -> None:
    """Garbage first, or an exit report for a worker the agent never started: the link
    drops that host, and no worker of the agent's is marked gone by it."""
    link = HostLink(os.path.join(str(tmp_path), "agent.sock"))
    try:
        garbage = _fake_host(link.path)
        garbage.sendmsg([b"\xff\x00not a protobuf"])
        assert _dropped(garbage) and link.connections == 0
        liar = _fake_host(link.path)
        liar.sendmsg([pb.FromHost(hello=4242).SerializeToString()])
        assert link.wait_connected(5) and link.connections == 1
        liar.sendmsg(
            [pb.FromHost(exited=pb.WorkerExited(worker_id="pod.w9", code=0)).SerializeToString()]
        )
        assert _dropped(liar)
        deadline = time.monotonic() + 5
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not link.connected
        # with no host, a start reads as the worker's loss, never a hang
        r, w = os.pipe()
        proc = link.launch("pod.w0", 0, r, w)
        assert proc.poll() is not None
        os.close(r)
        os.close(w)
    finally:
        link.close()
