"""Each step's own clocks in the step log (issue 18): CPU time of the step's compute,
the forward CPU time of each layer unit, and the time it waited on pipeline
neighbours and on collectives. A real 2-stage pipeline on real processes; the
figures must be consistent with each other."""

from __future__ import annotations

import asyncio
import io
import json
import os

from elastiq.cli.local_run import run_local_async
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.config import JobConfig, ModelConfig


def test_every_step_logs_its_cpu_time_and_its_waits(tmp_path: object) -> None:
    step_log = os.path.join(str(tmp_path), "steps")
    job = JobConfig(
        job="clocks",
        steps=8,
        global_batch=8,
        micro_batch=2,
        seq_len=32,
        pipeline_stages=2,
        step_log=step_log,
        model=ModelConfig(dim=32, n_layers=2, n_heads=2),
    )
    local = LocalRunConfig(workers=2, run_dir=str(tmp_path))
    summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
    assert summary.succeeded, summary
    entries = []
    for name in os.listdir(step_log):
        with open(os.path.join(step_log, name), encoding="utf-8") as fh:
            entries += [json.loads(line) for line in fh if line.strip()]
    assert len(entries) == 16  # 8 steps on each of 2 ranks
    for e in entries:
        t = e["times"]
        assert 0 < t["cpu_s"] <= t["wall_s"] + 0.01, e  # one thread cannot beat the clock
        assert 0 <= t["p2p_wait_s"] + t["collective_wait_s"] <= t["wall_s"] + 0.01, e
        assert t["wall_s"] <= e["step_time"] + 1e-6, e  # the step, not the whole loop
    # each rank's own units, forward of one micro-batch each: 4 micro-batches of it fit
    # in the step's CPU time, and the two ranks together ran every unit of the model
    for e in entries:
        per_call = e["unit_forward_s"]
        assert per_call and all(v > 0 for v in per_call.values()), e
        assert 4 * sum(per_call.values()) <= e["times"]["cpu_s"], e
    assert {u for e in entries for u in e["unit_forward_s"]} == {"0", "1", "2", "3"}
    # a pipeline waits on its neighbour, and every step agrees on the loss by all-reduce
    assert all(e["times"]["collective_wait_s"] > 0 for e in entries)
    assert any(e["times"]["p2p_wait_s"] > 0 for e in entries)
