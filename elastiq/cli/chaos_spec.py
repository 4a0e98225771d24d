"""Chaos by (rank, step) from the command line: `kill-worker:rank=2,step=100`.

Where it sits: `elastiq run --chaos SPEC` parses each spec here into a `ChaosSpec`
the local runner schedules; `elastiq chaos ACTION` maps its action name through
`CHAOS_ACTIONS` to the proto's `ChaosAction`. A spec that does not parse is refused
with a ValueError saying what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

from elastiq.proto import elastiq_pb2 as pb

CHAOS_ACTIONS = {
    "kill-worker": pb.KILL_WORKER,
    "hang": pb.HANG_WORKER,
    "kill-node": pb.KILL_NODE,
    "kill-before-snapshot": pb.KILL_BEFORE_SNAPSHOT,
}


@dataclass(frozen=True, slots=True)
class ChaosSpec:
    """One scheduled fault: `kill-worker:rank=2,step=50`, `hang:rank=1,step=30`,
    `kill-node:node=node1,step=40`, `kill-before-snapshot:rank=1,step=15` (after its
    update of step 15, before its snapshot of it leaves)."""

    action: str
    rank: int = -1
    node: str = ""
    step: int = 0

    def to_request(self, token: str = "") -> pb.AdminRequest:
        """The admin request that injects this fault at its step."""
        return pb.AdminRequest(
            token=token,
            action=CHAOS_ACTIONS[self.action],
            rank=self.rank,
            node_id=self.node,
            at_step=self.step,
        )

    @classmethod
    def parse(cls, text: str) -> ChaosSpec:
        action, _, rest = text.partition(":")
        if action not in CHAOS_ACTIONS:
            raise ValueError(f"chaos {text!r}: action must be one of {sorted(CHAOS_ACTIONS)}")
        fields: dict[str, str] = {}
        for part in filter(None, rest.split(",")):
            key, eq, value = part.partition("=")
            if not eq or key not in ("rank", "node", "step"):
                raise ValueError(f"chaos {text!r}: expected rank=R, node=N or step=S, got {part!r}")
            fields[key] = value
        try:
            spec = cls(
                action,
                int(fields.get("rank", -1)),
                fields.get("node", ""),
                int(fields.get("step", 0)),
            )
        except ValueError as exc:
            raise ValueError(f"chaos {text!r}: rank and step must be integers") from exc
        if action == "kill-node" and not spec.node:
            raise ValueError(f"chaos {text!r}: kill-node needs node=NODE_ID")
        if action != "kill-node" and spec.rank < 0:
            raise ValueError(f"chaos {text!r}: {action} needs rank=R")
        return spec
