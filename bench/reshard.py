"""Online resharding: lose one worker of a PP x DP job and measure the change.

For PP2xDP2 (4 workers) and PP4xDP2 (8 workers), ZeRO-1: SIGKILL one worker of a
middle position at step KILL_AT, once as it reports the step (kill-worker: wherever
its snapshot transfer happens to be) and once right after its update, before its
snapshot leaves (kill-before-snapshot: the worst moment, which a replay must cover
for lost_steps to stay 0), and report
- mttr_s split by phase (detect, plan, deliver, comm_rebuild, migrate, resume),
  from the controller's recovery record;
- migrated_bytes: what the plan's moves carried (params 4 B/element, moments 8);
- min_bytes: the state that existed only on the lost worker (what its buddy had to
  provide): no recovery can move less;
- throughput_before / throughput_after (tokens/s, from rank 0's step log, medians
  of the steps between warm-up and the kill, and after the change);
- post_change_efficiency = after / (before x survivors / workers).
Prints progress lines, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
from typing import Any

from elastiq.cli.chaos_spec import ChaosSpec
from elastiq.cli.local_run import run_local_async
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.cli.summary import RunSummary
from elastiq.config import JobConfig, ModelConfig
from elastiq.proto import elastiq_pb2 as pb

LAYOUTS = {"PP2xDP2": (2, 4, 1), "PP4xDP2": (4, 8, 3)}  # stages, workers, victim rank


def job_config(stages: int, steps: int, step_log: str) -> JobConfig:
    return JobConfig(
        job="bench-reshard",
        steps=steps,
        global_batch=32,
        micro_batch=2,
        seq_len=64,
        pipeline_stages=stages,
        zero=1,
        step_log=step_log,
        model=ModelConfig(dim=64, n_layers=6, n_heads=4),
    )


def _tokens_per_s(walls: list[float], tokens_per_step: int) -> float | None:
    gaps = [b - a for a, b in itertools.pairwise(walls)]
    return round(tokens_per_step / statistics.median(gaps), 1) if gaps else None


def measure(layout: str, fault: str, steps: int, kill_at: int, warmup: int) -> dict[str, Any]:
    import asyncio

    stages, workers, victim = LAYOUTS[layout]
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
        cfg = job_config(stages, steps, os.path.join(tmp, "steps"))
        captured: dict[str, pb.StatusResponse] = {}

        async def main() -> RunSummary:
            local = LocalRunConfig(
                workers=workers,
                run_dir=tmp,
                chaos=[ChaosSpec(fault, rank=victim, step=kill_at)],
            )
            return await run_local_async(cfg, local, out=quiet, on_status=_keep(captured))

        summary = asyncio.run(main())
        if not summary.succeeded or not summary.recoveries:
            return {"error": summary.error or f"phase {summary.phase}"}
        lines = []
        for name in os.listdir(cfg.step_log):
            with open(os.path.join(cfg.step_log, name), encoding="utf-8") as fh:
                lines += [json.loads(line) for line in fh if line.strip()]
    rank0 = sorted((e for e in lines if e["rank"] == 0), key=lambda e: (e["generation"], e["step"]))
    tokens = cfg.global_batch * cfg.seq_len
    before = [e["wall"] for e in rank0 if e["generation"] == 1 and warmup <= e["step"] < kill_at]
    after_all = [e["wall"] for e in rank0 if e["generation"] > 1]
    after = after_all[warmup // 2 :]
    plan = captured["final"].plan
    moved = sum((m.hi - m.lo) * (4 if m.what == "params" else 8) for m in plan.moves)
    lower = sum(
        (m.hi - m.lo) * (4 if m.what == "params" else 8) for m in plan.moves if m.via == "buddy"
    )
    rec = summary.recoveries[0]
    t_before, t_after = _tokens_per_s(before, tokens), _tokens_per_s(after, tokens)
    survivors = workers - 1
    return {
        "workers": workers,
        "stages_after": [len(st.ranks) for st in plan.stages],
        "units_after": [[st.unit_lo, st.unit_hi] for st in plan.stages],
        "mttr_s": rec.recovery_s,
        "phases_s": rec.phases_s,
        "lost_steps": rec.lost_steps,
        "migrated_bytes": moved,
        "min_bytes": lower,
        "throughput_before": t_before,
        "throughput_after": t_after,
        "post_change_efficiency": (
            round(t_after / (t_before * survivors / workers), 3) if t_before and t_after else None
        ),
    }


def _keep(captured: dict[str, pb.StatusResponse]) -> Any:
    def on_status(status: pb.StatusResponse) -> None:
        captured["final"] = status

    return on_status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--kill-at", type=int, default=45)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--layouts", default="PP2xDP2,PP4xDP2")
    parser.add_argument("--faults", default="kill-worker,kill-before-snapshot")
    args = parser.parse_args()
    result = {}
    for layout in args.layouts.split(","):
        for fault in args.faults.split(","):
            key = layout if fault == "kill-worker" else f"{layout} {fault}"
            result[key] = measure(layout, fault, args.steps, args.kill_at, args.warmup)
            print(f"{key}: {json.dumps(result[key])}", flush=True)
    result["targets"] = {"post_change_efficiency": 0.90, "lost_steps": 0, "mttr_s": 3.0}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
