"""Chaos orders: a fault the operator asked for, resolved to the agent that carries it out.

Where it sits: the gRPC Admin handler and `elastiq run --chaos` call the job
controller's `inject_chaos`, which asks `resolve_chaos` (pure) for the order and queues
it on the target node's stream. A node or rank that does not exist is refused with a
ValueError that says what exists, before anything is sent.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from elastiq.controller.planner import HybridLayout
from elastiq.proto import elastiq_pb2 as pb


@dataclass(frozen=True, slots=True)
class ChaosOrder:
    node_id: str
    """The agent that carries it out."""
    command: pb.ChaosCommand
    description: str
    """What was done, for the operator."""


def resolve_chaos(
    request: pb.AdminRequest, *, nodes: Collection[str], layout: HybridLayout | None
) -> ChaosOrder:
    """`request`: action, target (rank, or node_id for KILL_NODE), at_step, at_generation."""
    action, rank, node_id = request.action, request.rank, request.node_id
    command = pb.ChaosCommand(
        action=action,
        at_step=request.at_step,
        at_generation=request.at_generation,
        id=f"chaos-{time.time_ns()}",
    )
    if action == pb.KILL_NODE:
        if node_id not in nodes:
            raise ValueError(f"unknown node id {node_id!r}; known: {sorted(nodes)}")
        return ChaosOrder(node_id, command, f"killing node {node_id}")
    world = layout.world_size if layout is not None else 0
    if layout is None or not 0 <= rank < world:
        raise ValueError(
            f"rank {rank} is out of range: the current plan has {world} rank(s)"
            + ("" if world else " (no plan yet)")
        )
    target = layout.workers[rank]
    command.worker_id, command.rank = target.worker_id, rank
    name = pb.ChaosAction.Name(action).lower().replace("_", " ")
    return ChaosOrder(target.node_id, command, f"{name}: rank {rank} ({target.worker_id})")
