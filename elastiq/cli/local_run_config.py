"""The shape of `elastiq run`: workers, nodes, faults and where the run's files go.

Kept apart from the runner (local_run.py) so the command line can build and validate
it without importing the controller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from elastiq.cli.chaos_spec import ChaosSpec


@dataclass(kw_only=True, slots=True)
class LocalRunConfig:
    """Shape of a local run."""

    workers: int = 4
    """Total worker processes."""
    min_workers: int = 0
    """Ready workers needed to start (torchrun's --nnodes MIN); 0: all of --workers.
    Below --workers, the job starts once the minimum is ready and the others have
    had --settle to come, and takes the late ones in as they arrive."""
    max_workers: int = 0
    """Workers to train with; the rest wait as spares (0: all; with --spare-nodes,
    --workers)."""
    settle_s: float = 5.0
    """Once --min-workers are ready, wait up to this long for the others (it ends as
    soon as every worker is ready)."""
    start_timeout_s: float = 300.0
    """Fail the job when it has not started this long after launch, saying what it
    waited for (0: wait for ever)."""
    start_retries: int = 3
    """Times a worker, or a node's agent, that dies before the first generation is
    started again (nothing was computed, so nothing is lost)."""
    workers_per_node: int = 1
    """Workers per agent (node); workers must be a multiple of it."""
    spare_nodes: int = 0
    """Extra agents whose workers wait as spares and replace lost workers in place."""
    store: str = "embedded"
    """Controller store URL."""
    chaos: list[ChaosSpec] = field(default_factory=list)
    """Faults to inject, by (rank, step)."""
    add_nodes_at: list[int] = field(default_factory=list)
    """Start one more node (an agent with --workers-per-node workers) when the job
    reaches each of these steps: scale-out rehearsed the way --chaos rehearses
    failures. The new workers join the running job; nobody restarts."""
    liveness_timeout_s: float = 3.0
    """Agent watchdog: kill a worker silent for this long."""
    progress_timeout_s: float = 120.0
    """Agent watchdog: kill a worker without a step for this long."""
    max_restarts: int = 0
    """Times each agent starts a slot's worker again after it dies (0: never)."""
    lease_ttl_s: float = 3.0
    """Node lease TTL."""
    run_dir: str = ""
    """Where the run file and logs go (default ./runs/<job>)."""
    summary_json: str = ""
    """Also write the summary as JSON here."""
    log_level: str = "WARNING"
    """Log level of the agents and workers (their logs go to run_dir)."""
    metrics_port: int = -1
    """Prometheus port of the controller (-1 off, 0 any free port)."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_restarts <= 10_000:
            raise ValueError(f"max_restarts={self.max_restarts} must be in 0..10000")
        if not 0 <= self.min_workers <= self.workers:
            raise ValueError(
                f"min_workers={self.min_workers} must be in 0..workers={self.workers} "
                "(0: all of them)"
            )
        if self.max_workers and self.max_workers < (self.min_workers or self.workers):
            raise ValueError(
                f"max_workers={self.max_workers} is below the workers needed to start "
                f"({self.min_workers or self.workers})"
            )
        if self.settle_s < 0 or self.start_timeout_s < 0:
            raise ValueError("settle_s and start_timeout_s must be >= 0")
        if not 0 <= self.start_retries <= 100:
            raise ValueError(f"start_retries={self.start_retries} must be in 0..100")
        if self.spare_nodes < 0:
            raise ValueError(f"spare_nodes={self.spare_nodes} must be >= 0")
        if self.workers < 1 or self.workers_per_node < 1:
            raise ValueError("workers and workers_per_node must be at least 1")
        if self.workers % self.workers_per_node:
            raise ValueError(
                f"workers={self.workers} must be a multiple of "
                f"workers_per_node={self.workers_per_node}"
            )
        for spec in self.chaos:
            if spec.action != "kill-node" and spec.rank >= self.workers:
                raise ValueError(
                    f"chaos {spec.action}: rank {spec.rank} does not exist with {self.workers} "
                    f"workers (ranks 0..{self.workers - 1})"
                )
            if spec.action == "kill-node" and spec.node not in {
                f"node{i}" for i in range(self.workers // self.workers_per_node)
            }:
                raise ValueError(
                    f"chaos kill-node: node {spec.node!r} does not exist; local nodes are "
                    f"node0..node{self.workers // self.workers_per_node - 1}"
                )
        if any(step < 1 for step in self.add_nodes_at):
            raise ValueError(
                f"add_nodes_at={self.add_nodes_at}: a node joins at a step >= 1 (the job "
                "must be running; to start with it, raise --workers)"
            )
        total = self.workers + (self.spare_nodes + len(self.add_nodes_at)) * self.workers_per_node
        if total > 64:
            raise ValueError(
                f"{total} workers with spares and added nodes: a local run is limited to 64 "
                "processes"
            )


def run_file_path(job: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".elastiq", "local", f"{job}.json")
