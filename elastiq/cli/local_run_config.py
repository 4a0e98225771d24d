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
    workers_per_node: int = 1
    """Workers per agent (node); workers must be a multiple of it."""
    spare_nodes: int = 0
    """Extra agents whose workers wait as spares and replace lost workers in place."""
    store: str = "embedded"
    """Controller store URL."""
    chaos: list[ChaosSpec] = field(default_factory=list)
    """Faults to inject, by (rank, step)."""
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
        if self.workers > 64:
            raise ValueError(f"workers={self.workers}: a local run is limited to 64 processes")


def run_file_path(job: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".elastiq", "local", f"{job}.json")
