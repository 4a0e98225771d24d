"""`elastiq run --add-node-at STEP`: scale-out rehearsed on one machine (issue 18).

A real local run: a third agent starts once the job reaches the step, its worker
joins the running pipeline, and nobody restarts. Also what the status now says of
the planner's unit costs, and the refusals of steps that cannot work."""

from __future__ import annotations

import asyncio
import io

import pytest

from elastiq.cli.local_run import run_local_async
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.config import JobConfig, ModelConfig
from elastiq.proto import elastiq_pb2 as pb


def _job(steps: int) -> JobConfig:
    return JobConfig(
        job="add-node",
        steps=steps,
        global_batch=8,
        micro_batch=2,
        seq_len=32,
        pipeline_stages=2,
        zero=1,
        # slow steps (no effect on the computation) leave the new agent, whose start
        # takes seconds on a loaded machine, time to join before the end
        step_delay_s=0.1,
        model=ModelConfig(dim=32, n_layers=2, n_heads=2),
    )


def test_a_node_added_at_a_step_joins_the_running_job_and_nobody_restarts(
    tmp_path: object,
) -> None:
    statuses: list[pb.StatusResponse] = []
    out = io.StringIO()
    local = LocalRunConfig(workers=2, run_dir=str(tmp_path), add_nodes_at=[3])
    summary = asyncio.run(run_local_async(_job(60), local, out=out, on_status=statuses.append))
    assert summary.succeeded, out.getvalue()
    end = statuses[-1]
    assert end.plan.world_size == 3 and {m.node_id for m in end.members} == {
        "node0",
        "node1",
        "node2",
    }
    assert "node2 starts at step" in out.getvalue()
    grown = next(s for s in statuses if s.plan.world_size == 3)
    assert not grown.plan.abort_in_flight, "a join waits for the step boundary"
    assert sorted(len(st.ranks) for st in grown.plan.stages) == [1, 2]
    newcomer = next(a.rank for a in grown.plan.assignments if a.node_id == "node2")
    assert newcomer in {m.dst_rank for m in grown.plan.moves}
    assert all(m.via == "live" for m in grown.plan.moves)
    joined = [r for r in end.recoveries if "joined" in r.cause]
    assert joined and all(r.lost_steps == 0 for r in joined), list(end.recoveries)
    first = next(s for s in statuses if s.plan.generation == 1 and s.members)
    pids = {m.worker_id: m.pid for m in first.members}
    assert all(pids[w] == m.pid for m in end.members if (w := m.worker_id) in pids)
    # the costs the planner balanced with: one per layer unit (embedding, 2 blocks,
    # head), measured by the workers
    assert len(end.unit_costs_s) == 4 and all(c > 0 for c in end.unit_costs_s)


def test_an_added_node_that_could_never_join_is_refused_before_anything_starts(
    tmp_path: object,
) -> None:
    local = LocalRunConfig(workers=2, run_dir=str(tmp_path), add_nodes_at=[60])
    with pytest.raises(ValueError, match="would never join"):
        asyncio.run(run_local_async(_job(60), local, out=io.StringIO()))
    with pytest.raises(ValueError, match="step >= 1"):
        LocalRunConfig(workers=2, add_nodes_at=[0])
    with pytest.raises(ValueError, match="limited to 64"):
        LocalRunConfig(workers=60, add_nodes_at=[5] * 5)
