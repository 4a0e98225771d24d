"""The controller's configuration and its records of nodes and workers: plain data,
kept apart from the logic in job.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from elastiq.controller.planner import WorkerRef
from elastiq.proto import elastiq_pb2 as pb
from elastiq.rpc import Encoded


@dataclass(kw_only=True, slots=True)
class ControllerConfig:
    """Control-plane timing and admission; the training itself is in JobConfig."""

    lease_ttl_s: float = 3.0
    """An agent that sends no heartbeat for this long is declared lost (its record in
    the store lives twice as long, refreshed once per this period)."""
    heartbeat_interval_s: float = 0.5
    """How often agents heartbeat in a small job (must be at most half of
    lease_ttl_s); a large one is told to heartbeat less often, see max_heartbeat_rate."""
    max_heartbeat_rate: float = 500.0
    """The heartbeats all agents together may send per second: past max_heartbeat_rate x
    heartbeat_interval_s nodes, the interval doubles (up to max_heartbeat_interval_s)
    and the silence that loses a node grows with it (lease_ttl_s / heartbeat_interval_s
    intervals). A heartbeat costs the controller about half a millisecond of CPU, so
    this keeps its load flat as the job grows; 0: never change the interval."""
    max_heartbeat_interval_s: float = 4.0
    """The longest interval max_heartbeat_rate may set (a silent node is lost after
    lease_ttl_s / heartbeat_interval_s such intervals). A crashed agent is lost at once
    whatever this is: its plan stream closes."""
    min_workers: int = 1
    """Ready workers needed before the first generation is planned."""
    max_workers: int = 0
    """Workers to train with (0: every ready one); the rest wait as spares and take
    a lost worker's exact place, so the layout does not change."""
    settle_s: float = 1.0
    """After min_workers are ready, wait up to this long for the rest of the
    registered nodes' workers before planning (it ends early once all are ready).
    Also how long a node joining the running job waits for its other workers, so
    that they join in one reconfiguration."""
    start_timeout_s: float = 300.0
    """Fail the job when no generation has formed this long after the controller
    started, saying what it waited for (0: wait for ever). Kubernetes: keep it above
    the slowest image pull."""
    coalesce_s: float = 0.05
    """Membership changes within this window become one generation."""
    takeover_grace_s: float = 5.0
    """After a takeover, how long to wait for the old plan's agents to come back."""
    join_timeout_s: float = 300.0
    """A node whose workers have not joined a generation this long after its plan was
    sent is lost (a stalled agent that stopped reading its plan stream would otherwise
    hold the generation's completion, and every newcomer, for ever); 0: wait for ever.
    Keep it above the job's longest join (rendezvous plus state transfer)."""
    events_kept: int = 200
    """Events kept for `elastiq status`."""

    def __post_init__(self) -> None:
        if self.lease_ttl_s <= 0 or self.heartbeat_interval_s <= 0:
            raise ValueError("lease_ttl_s and heartbeat_interval_s must be positive")
        if self.heartbeat_interval_s * 2 > self.lease_ttl_s:
            raise ValueError(
                f"heartbeat_interval_s={self.heartbeat_interval_s} must be at most half of "
                f"lease_ttl_s={self.lease_ttl_s}, or one late heartbeat loses the node"
            )
        if self.max_heartbeat_rate < 0:
            raise ValueError(f"max_heartbeat_rate={self.max_heartbeat_rate} must be >= 0 (0: off)")
        if self.max_heartbeat_interval_s < self.heartbeat_interval_s:
            raise ValueError(
                f"max_heartbeat_interval_s={self.max_heartbeat_interval_s} is below "
                f"heartbeat_interval_s={self.heartbeat_interval_s}"
            )
        if self.min_workers < 1:
            raise ValueError(f"min_workers={self.min_workers} must be at least 1")
        if self.max_workers and self.max_workers < self.min_workers:
            raise ValueError(
                f"max_workers={self.max_workers} is below min_workers={self.min_workers}"
            )
        if self.settle_s < 0 or self.coalesce_s < 0 or self.takeover_grace_s < 0:
            raise ValueError("settle_s, coalesce_s and takeover_grace_s must be >= 0")
        if self.start_timeout_s < 0:
            raise ValueError(f"start_timeout_s={self.start_timeout_s} must be >= 0 (0: off)")
        if self.join_timeout_s < 0:
            raise ValueError(f"join_timeout_s={self.join_timeout_s} must be >= 0 (0: off)")


@dataclass(slots=True)
class WorkerState:
    ref: WorkerRef
    pid: int = 0
    state: str = "ready"  # ready | running | finished
    progress: pb.WorkerProgress | None = None
    first_step_wall: dict[int, float] = field(default_factory=dict)
    # the last generation whose join this worker reported complete
    joined_generation: int = 0


@dataclass(slots=True)
class NodeState:
    node_id: str
    slots: int
    address: str
    lease: int
    secret: str
    """The node's credential (controller/service.py); issued by Register."""
    last_seen: float
    """time.monotonic() of its last heartbeat (or registration)."""
    heartbeat_interval_s: float = 0.0
    """The interval this node was last told to heartbeat at."""
    registered: float = field(default_factory=time.monotonic)
    """time.monotonic() when it registered (the start wait names nodes lagging since)."""
    lease_ttl_s: float = 0.0
    """The TTL of its store lease, as granted."""
    lease_refreshed: float = 0.0
    """time.monotonic() when its store lease was last granted or refreshed."""
    workers: dict[str, WorkerState] = field(default_factory=dict)
    queue: asyncio.Queue[pb.Directive | Encoded | None] = field(default_factory=asyncio.Queue)
    """The newest plan stream's queue; None ends a stream."""
    streams: int = 0
