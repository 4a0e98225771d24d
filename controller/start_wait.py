"""Before the first generation: what the job is waiting for, said plainly, and when
it gives up (issue 17).

Where it sits: pure logic under controller/job.py, which ticks it once a second
while no generation has formed and puts its line in the status (`waiting_for`), in
an event when the wait starts and every minute after, and, once `timeout_s` has
passed without a start, in the message the job fails with. A job that waits for
workers that will never come otherwise sits in Pending for ever, and the user
cannot tell a slow start from a stuck one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NodeReadiness:
    """One registered node as the wait sees it."""

    node_id: str
    slots: int
    """Workers the node said it runs."""
    ready: int
    """Of those, how many reported ready (built their model, waiting for a plan)."""
    registered_s: float
    """Seconds since the node registered."""


def duration(seconds: float) -> str:
    """`1m20s`, `45s`, `2h03m`: how long, for a person."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def describe_wait(min_workers: int, waited_s: float, nodes: list[NodeReadiness]) -> str:
    """What the job waits for, then each lagging node, then (when the registered nodes
    cannot reach the minimum at all) what to do about it."""
    ready = sum(n.ready for n in nodes)
    slots = sum(n.slots for n in nodes)
    line = f"{ready} of {slots} workers ready, minimum {min_workers}, waiting {duration(waited_s)}"
    if not nodes:
        hint = " (are the agents running, pointed at this controller?)" if waited_s >= 30 else ""
        return f"{line}; no node has registered yet{hint}"
    lagging = [n for n in nodes if n.ready < n.slots]
    lagging.sort(key=lambda n: (-n.registered_s, n.node_id))
    shown = [
        f"{n.node_id}: {n.ready} of {n.slots} ready, registered {duration(n.registered_s)} ago"
        for n in lagging[:5]
    ]
    if len(lagging) > 5:
        shown.append(f"{len(lagging) - 5} more node(s) not ready")
    parts = [line, *shown]
    if slots < min_workers:
        parts.append(
            f"the {len(nodes)} registered node(s) run {slots} workers in all, fewer than the "
            f"minimum: start more nodes or lower --min-workers"
        )
    return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class WaitTick:
    """What one tick of the wait asks the controller to do."""

    line: str
    """The status line: what the job waits for now."""
    event: bool = False
    """Emit `line` as an event (the wait started, or another minute passed)."""
    give_up: str = ""
    """Non-empty: the start timeout passed; fail the job with this message."""


@dataclass(slots=True)
class StartWait:
    """The wait for the first generation, from `began` (time.monotonic())."""

    min_workers: int
    timeout_s: float
    """Fail the job when no generation has formed this long after `began` (0: never)."""
    began: float
    event_every_s: float = 60.0
    _last_event: float | None = field(default=None, init=False)

    def tick(self, now: float, nodes: list[NodeReadiness]) -> WaitTick:
        waited = now - self.began
        line = describe_wait(self.min_workers, waited, nodes)
        if self.timeout_s and waited >= self.timeout_s:
            return WaitTick(
                line,
                give_up=(
                    f"no generation formed within the start timeout ({duration(self.timeout_s)}): "
                    f"{line}. Start the missing workers, lower --min-workers, or raise "
                    "--start-timeout"
                ),
            )
        due = self._last_event is None or now - self._last_event >= self.event_every_s
        if due:
            self._last_event = now
        return WaitTick(line, event=due)
