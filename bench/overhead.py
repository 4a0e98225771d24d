"""Steady-state overhead: elastiq's training step vs plain PyTorch on the same job.

Data parallelism over 4 workers, same model, data, global batch and micro-batches.
The plain side is DDP under torchrun (bench/torchrun_ddp.py, no kill, checkpoints
off). The elastiq side is `elastiq run` with ZeRO-0 and ZeRO-1 (buddy snapshots
on). Step time is the median over steps after a warm-up, measured by each side's
own per-step wall clock. overhead = elastiq / plain (target <= 1.10).
For pipelines, PP2 (2 workers) against torch.distributed.pipelining's
Schedule1F1B on the same units (bench/pipelining_baseline.py).

Repetitions are interleaved (round k runs every configuration once), because this
VM drifts by more than the target's margin over a long benchmark: a ratio of two
runs made minutes apart measures the drift. Each overhead is the median over
rounds of the ratio within a round.
Prints progress lines, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from elastiq.cli.flags import add_model_args, job_overrides
from elastiq.cli.local_run import run_local
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.config import JobConfig, ModelConfig
from elastiq.controller.stages import balance_stages

HERE = os.path.dirname(os.path.abspath(__file__))


#: set from --model and the batch flags (elastiq.cli.flags.add_model_args)
OVERRIDES: dict[str, Any] = {}


def job_config(steps: int, zero: int, stages: int = 1) -> JobConfig:
    fields: dict[str, Any] = {"global_batch": 32, "micro_batch": 4, "seq_len": 64}
    fields.update(OVERRIDES)
    return JobConfig(
        job="bench-overhead",
        pipeline_stages=stages,
        steps=steps,
        zero=zero,
        model=ModelConfig(dim=64, n_layers=4, n_heads=4),
        **fields,
    )


def elastiq_step_times(steps: int, zero: int, stages: int = 1, workers: int = 4) -> list[float]:
    """Wall-clock time between consecutive committed steps on rank 0 (its step log)."""
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
        cfg = job_config(steps, zero, stages)
        cfg.step_log = os.path.join(tmp, "steps")
        summary = run_local(cfg, LocalRunConfig(workers=workers, run_dir=tmp), out=quiet)
        if not summary.succeeded:
            raise RuntimeError(f"elastiq run failed: {summary.error}")
        walls: list[float] = []
        for name in sorted(os.listdir(cfg.step_log)):
            with open(os.path.join(cfg.step_log, name), encoding="utf-8") as fh:
                lines = [json.loads(line) for line in fh if line.strip()]
            if lines and lines[0]["rank"] == 0:
                walls = [line["wall"] for line in lines]
    return [b - a for a, b in itertools.pairwise(walls)]


def _torchrun_step_times(script: str, nproc: int, args: list[str]) -> list[float]:
    """Run a baseline script under torchrun; step times from rank 0's progress lines."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), os.path.join(HERE, script),
            *args, "--workdir", workdir,
        ]  # fmt: skip
        subprocess.run(
            cmd,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=900,
        )
        with open(os.path.join(workdir, "progress-0.jsonl"), encoding="utf-8") as fh:
            walls = [json.loads(line)["wall"] for line in fh if line.strip()]
    return [b - a for a, b in itertools.pairwise(walls)]


def plain_step_times(steps: int) -> list[float]:
    """DDP under torchrun (checkpoints off)."""
    config = job_config(steps, 0).to_json()
    return _torchrun_step_times(
        "torchrun_ddp.py", 4, ["--config", config, "--ckpt-every", str(10**9)]
    )


def pipelining_step_times(steps: int, stages: int) -> list[float]:
    """torch.distributed.pipelining (Schedule1F1B) on the units elastiq's planner
    gives its first plan."""
    cfg = job_config(steps, 0, stages)
    units = balance_stages([float(n) for n in cfg.unit_numel()], [1] * stages)
    return _torchrun_step_times(
        "pipelining_baseline.py", stages, ["--config", cfg.to_json(), "--units", json.dumps(units)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    add_model_args(parser)
    args = parser.parse_args()
    OVERRIDES.update(job_overrides(args))
    n, w, r = args.steps, args.warmup, args.reps
    runs = {
        "ddp": lambda: plain_step_times(n),
        "elastiq_zero0": lambda: elastiq_step_times(n, 0),
        "elastiq_zero1": lambda: elastiq_step_times(n, 1),
        "pipelining_pp2": lambda: pipelining_step_times(n, 2),
        "elastiq_pp2": lambda: elastiq_step_times(n, 0, stages=2, workers=2),
    }
    if args.model:
        # the pipelining baseline builds the built-in decoder's units only
        del runs["pipelining_pp2"], runs["elastiq_pp2"]
    per_rep: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(r):
        for name, measure in runs.items():
            per_rep[name].append(round(statistics.median(measure()[w:]), 5))
            print(f"round {rep + 1}/{r} {name}: median step {per_rep[name][-1]:.4f}s", flush=True)
    result: dict[str, Any] = {}
    for name, values in per_rep.items():
        result[f"{name}_step_s"] = round(statistics.median(values), 5)
        result[f"{name}_reps_s"] = values
    pairs = {
        "overhead_zero0": ("elastiq_zero0", "ddp"),
        "overhead_zero1": ("elastiq_zero1", "ddp"),
        "overhead_pp2": ("elastiq_pp2", "pipelining_pp2"),
    }
    for key, (mine, plain) in pairs.items():
        if mine not in per_rep:
            continue
        ratios = [a / b for a, b in zip(per_rep[mine], per_rep[plain], strict=True)]
        result[key] = round(statistics.median(ratios), 3)
        result[f"{key}_per_round"] = [round(x, 3) for x in ratios]
    result["target"] = 1.10
    print(json.dumps(result))


if __name__ == "__main__":
    main()
