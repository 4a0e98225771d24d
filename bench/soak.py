"""Chaos soak: a job on real processes through a fault every 30 s for 20 minutes.

Runs `elastiq chaos run` on a scenario built here: 4 workers (DP, ZeRO-1), two
controllers on an etcd of the run's own, checkpoints every 20 steps, and all eight
fault kinds in rotation (kill worker, kill node, hang, kill the leading controller,
restart etcd, corrupt the newest checkpoint, kill during a checkpoint write, kill
during a reconfiguration). Killed workers are restarted by their agents and killed
nodes and controllers replaced, as Kubernetes would. Then the same job (same steps,
same data) runs without any fault, for the loss to compare against.

Prints progress, then one JSON line: faults injected and survived, steps lost,
committed checkpoints lost, final loss against the failure-free run, MTTR per fault
kind (p50/max). `--minutes 3` makes a short check of the same scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from elastiq.chaos.runner import run_scenario
from elastiq.chaos.scenario import Scenario
from elastiq.cli.local_run import run_local
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.config import JobConfig

#: seconds a step is held (besides its compute): paces the job to outlast the soak
STEP_DELAY_S = 0.25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between faults")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work-dir", default="")
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="elastiq-soak-")
    duration = args.minutes * 60
    # about 0.3 s a step with the delay: the job outlasts the faults, then finishes
    steps = int(duration / 0.3)
    job: dict[str, Any] = {
        "steps": steps,
        "global_batch": 16,
        "micro_batch": 4,
        "seq_len": 32,
        "model": {"dim": 32, "n_layers": 4, "n_heads": 2},
        "zero": 1,
        "checkpoint_every": 20,
        "checkpoint_keep": 3,
    }
    scenario = Scenario(
        job={**job, "step_delay_s": STEP_DELAY_S, "checkpoint_url": f"{work}/ckpt"},
        workers=args.workers,
        controllers=2,
        store="etcd",
        duration_s=duration,
        fault_every_s=args.every,
        first_fault_s=min(20.0, args.every),
    )
    soak = run_scenario(scenario, os.path.join(work, "soak"))
    print(f"soak done; now the same {steps} steps without faults", flush=True)
    reference_job = JobConfig.from_dict(
        {**job, "job": "soak-reference", "checkpoint_url": f"{work}/ref-ckpt"}
    )
    reference = run_local(
        reference_job,
        LocalRunConfig(workers=args.workers, run_dir=os.path.join(work, "reference")),
    )
    result = {
        "bench": "soak",
        "minutes": args.minutes,
        "fault_every_s": args.every,
        "workers": args.workers,
        "steps": steps,
        "phase": soak.phase,
        "faults_injected": soak.faults_injected,
        "faults_survived": soak.faults_survived,
        "steps_lost": soak.steps_lost,
        "committed_checkpoints_lost": soak.committed_checkpoints_lost,
        "checkpoints_committed": soak.checkpoints_committed,
        "recoveries": soak.recoveries,
        "rejoins": soak.rejoins,
        "final_loss": round(soak.final_loss, 5),
        "failure_free_final_loss": round(reference.final_loss, 5),
        "final_loss_diff": round(soak.final_loss - reference.final_loss, 5),
        "mttr_s": soak.mttr_s,
        "wall_s": soak.wall_s,
        "work_dir": work,
    }
    print(json.dumps(result), flush=True)
    return 0 if soak.faults_survived == soak.faults_injected else 1


if __name__ == "__main__":
    sys.exit(main())
