"""The faults of a chaos run, one method each, as a cluster would suffer them.

Where it sits: elastiq/chaos/runner.py calls `inject(kind)` on its schedule; each
fault acts on the real processes of elastiq/chaos/cluster.py with real signals (or,
for the faults that must land at a precise moment, asks the controller to time them:
a kill during a checkpoint write, a kill in the middle of a reconfiguration). Victims
are drawn from a seeded generator among the members of the current plan.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass

from elastiq import fs
from elastiq.chaos.cluster import ChaosCluster
from elastiq.checkpoint import catalog
from elastiq.checkpoint.manifest import step_dir
from elastiq.child_processes import child_pids
from elastiq.proto import elastiq_pb2 as pb


@dataclass(slots=True)
class Injected:
    kind: str
    wall_time: float
    step: int
    """The job's step when it was injected."""
    detail: str


def _kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class FaultInjector:
    def __init__(self, cluster: ChaosCluster, seed: int) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.corrupted: set[int] = set()
        """Checkpoint steps corrupted on purpose (not counted as lost)."""
        self._later: list[threading.Timer] = []

    def inject(self, kind: str, status: pb.StatusResponse, leader: int) -> Injected:
        method = getattr(self, "_" + kind.replace("-", "_"))
        detail: str = method(status, leader)
        return Injected(kind, time.time(), status.step, detail)

    def _members(self, status: pb.StatusResponse) -> list[pb.Member]:
        planned = [m for m in status.members if m.rank >= 0 and m.pid > 0]
        if not planned:
            raise RuntimeError("no planned member to inject a fault into")
        return sorted(planned, key=lambda m: m.rank)

    def _later_do(self, delay: float, what: object) -> None:
        timer = threading.Timer(delay, what)  # type: ignore[arg-type]
        timer.daemon = True
        timer.start()
        self._later.append(timer)

    # the faults -----------------------------------------------------------------------
    def _kill_worker(self, status: pb.StatusResponse, leader: int) -> str:
        victim = self.rng.choice(self._members(status))
        _kill(victim.pid)
        return f"SIGKILL {victim.worker_id} (rank {victim.rank}, pid {victim.pid})"

    def _hang(self, status: pb.StatusResponse, leader: int) -> str:
        victim = self.rng.choice(self._members(status))
        _kill(victim.pid, signal.SIGSTOP)
        return f"SIGSTOP {victim.worker_id} (rank {victim.rank}, pid {victim.pid})"

    def _kill_node(self, status: pb.StatusResponse, leader: int) -> str:
        nodes = sorted({m.node_id for m in self._members(status)} & set(self.cluster.agents))
        node = self.rng.choice(nodes)
        agent = self.cluster.agents.pop(node)
        workers = child_pids(agent.pid)
        _kill(agent.pid)
        for pid in workers:
            _kill(pid)
        agent.wait(10)
        self._later_do(self.cluster.scenario.replace_after_s, self.cluster.start_agent)
        return f"SIGKILL node {node} (agent {agent.pid} and workers {workers}); replaced later"

    def _kill_leader(self, status: pb.StatusResponse, leader: int) -> str:
        proc = self.cluster.controllers.pop(leader)
        _kill(proc.pid)
        proc.wait(10)
        self._later_do(
            self.cluster.scenario.replace_after_s, lambda: self.cluster.start_controller(leader)
        )
        return f"SIGKILL the leading controller {leader} (pid {proc.pid}); restarted later"

    def _restart_etcd(self, status: pb.StatusResponse, leader: int) -> str:
        self.cluster.kill_etcd()
        outage = self.cluster.scenario.etcd_outage_s
        self._later_do(outage, self.cluster.start_etcd)
        return f"SIGKILL etcd for {outage:g}s"

    def _corrupt_checkpoint(self, status: pb.StatusResponse, leader: int) -> str:
        url = self.cluster.scenario.job_config().checkpoint_url
        steps = catalog.committed(url)
        if not steps:
            return "no committed checkpoint yet: nothing corrupted"
        step = steps[-1]
        where = fs.join(url, step_dir(step))
        files = [n for n in fs.list_names(where) if n.endswith(".safetensors")]
        path = fs.local_path(fs.join(where, self.rng.choice(files)))
        if path is None:
            return f"checkpoint {step} is not on a local filesystem: nothing corrupted"
        with open(path, "r+b") as fh:
            size = fh.seek(0, 2)
            at = size - 1 - self.rng.randrange(max(1, size // 4))  # in the data, not the header
            fh.seek(at)
            byte = fh.read(1)
            fh.seek(at)
            fh.write(bytes([byte[0] ^ 0xFF]))
        self.corrupted.add(step)
        return f"flipped byte {at} of {os.path.basename(path)} in checkpoint {step}"

    def _kill_during_checkpoint(self, status: pb.StatusResponse, leader: int) -> str:
        every = self.cluster.scenario.job_config().checkpoint_every
        at = (status.step // every + 1) * every
        victim = self.rng.choice(self._members(status))
        self.cluster.admin(leader, action=pb.KILL_WORKER, rank=victim.rank, at_step=at)
        return f"kill rank {victim.rank} when it commits step {at} (its checkpoint in flight)"

    def _kill_during_reconfiguration(self, status: pb.StatusResponse, leader: int) -> str:
        first, second = self.rng.sample(self._members(status), 2)
        self.cluster.admin(
            leader, action=pb.KILL_WORKER, rank=second.rank, at_generation=status.generation + 1
        )
        _kill(first.pid)
        return (
            f"SIGKILL rank {first.rank}, then rank {second.rank} as soon as generation "
            f"{status.generation + 1} reaches it"
        )

    def close(self) -> None:
        for timer in self._later:
            timer.cancel()
