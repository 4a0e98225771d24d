"""The job as `elastiq status` and `elastiq run` show it: one `pb.StatusResponse`.

Where it sits: the job controller's `status()` hands its records here; this module
reads them and builds the message, changing nothing. Members are listed node by
node, each with its rank in the current plan (-1: a spare or not yet planned); the
job's step, loss and throughput are the most advanced member's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from elastiq.controller.job_state import NodeState
from elastiq.controller.planner import HybridLayout
from elastiq.proto import elastiq_pb2 as pb


def build_status(
    header: pb.StatusResponse,
    plan: pb.Plan | None,
    layout: HybridLayout | None,
    nodes: Mapping[str, NodeState],
    events: Iterable[pb.Event],
    recoveries: Iterable[pb.Recovery],
    failure_message: str,
) -> pb.StatusResponse:
    """`header`: job, phase, generation, failures, leader, total steps, first loss."""
    resp = pb.StatusResponse()
    resp.CopyFrom(header)
    if plan is not None:
        resp.plan.CopyFrom(plan)
    ranks = {w.worker_id: r for r, w in enumerate(layout.workers)} if layout else {}
    best: pb.WorkerProgress | None = None
    for node in sorted(nodes.values(), key=lambda n: n.node_id):
        for w in sorted(node.workers.values(), key=lambda w: w.ref):
            p = w.progress
            resp.members.add(
                worker_id=w.ref.worker_id,
                node_id=node.node_id,
                rank=ranks.get(w.ref.worker_id, -1),
                step=p.step if p else 0,
                loss=p.loss if p else 0.0,
                state=w.state,
                pid=w.pid,
            )
            if p is not None:
                resp.checkpoint_step = max(resp.checkpoint_step, p.checkpoint_committed_step)
            if p is not None and (
                best is None or (p.step, p.wall_time) > (best.step, best.wall_time)
            ):
                best = p
    if best is not None:
        resp.step, resp.loss, resp.tokens_per_s = best.step, best.loss, best.tokens_per_s
    resp.events.extend(events)
    resp.recoveries.extend(recoveries)
    if failure_message:
        resp.events.append(pb.Event(wall_time=time.time(), kind="failed", message=failure_message))
    return resp
