"""MTTR: elastiq in-place recovery vs torchrun restart, same job and the same kill.

Both sides train the same model on the same data with the same global batch, 4
workers, and lose worker rank 2 to SIGKILL when it reports step KILL_AT. The kill
comes from outside the worker: elastiq's agent sends it (chaos by rank and step),
and for torchrun this script sends it when the rank's progress line shows the step.

mttr_s = time from the kill to the end of the next committed step.
lost_steps = committed steps that had to be computed again.
Prints progress lines, then one JSON object on the last line (medians of --reps).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from elastiq.cli.chaos_spec import ChaosSpec
from elastiq.cli.flags import add_model_args, job_overrides
from elastiq.cli.local_run import run_local
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.config import JobConfig, ModelConfig

HERE = os.path.dirname(os.path.abspath(__file__))


#: set from --model and the batch flags (elastiq.cli.flags.add_model_args)
OVERRIDES: dict[str, Any] = {}


def job_config(steps: int, zero: int = 0) -> JobConfig:
    fields: dict[str, Any] = {"global_batch": 32, "micro_batch": 4, "seq_len": 64}
    fields.update(OVERRIDES)
    return JobConfig(
        job="bench-mttr",
        zero=zero,
        steps=steps,
        model=ModelConfig(dim=64, n_layers=4, n_heads=4),
        **fields,
    )


def run_elastiq(steps: int, kill_at: int, zero: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
        summary = run_local(
            job_config(steps, zero),
            LocalRunConfig(
                workers=4, chaos=[ChaosSpec("kill-worker", rank=2, step=kill_at)], run_dir=tmp
            ),
            out=quiet,
        )
    if not summary.succeeded or not summary.recoveries:
        return {"mttr_s": None, "error": summary.error or f"phase {summary.phase}"}
    rec = summary.recoveries[0]
    return {
        "mttr_s": rec.recovery_s,
        "comm_rebuild_s": rec.phases_s.get("comm_rebuild", 0.0),
        "phases_s": rec.phases_s,
        "lost_steps": rec.lost_steps,
        "survivors_restarted": summary.workers_started - 4,
        "final_loss": summary.final_loss,
    }


def _read_progress(workdir: str, rank: int) -> list[dict[str, Any]]:
    path = os.path.join(workdir, f"progress-{rank}.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def torchrun_cmd(workdir: str, steps: int, ckpt_every: int, max_restarts: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", "4", "--max-restarts", str(max_restarts), "--monitor-interval", "0.1",
        os.path.join(HERE, "torchrun_ddp.py"), "--config", job_config(steps).to_json(),
        "--workdir", workdir, "--ckpt-every", str(ckpt_every),
    ]  # fmt: skip


def run_torchrun(steps: int, kill_at: int, ckpt_every: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        cmd = torchrun_cmd(workdir, steps, ckpt_every, max_restarts=3)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        log_path = os.path.join(workdir, "torchrun.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            kill_time = None
            killed_step = None
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                if kill_time is None:
                    lines = _read_progress(workdir, 2)
                    if lines and lines[-1]["step"] >= kill_at:
                        killed_step = lines[-1]["step"]
                        kill_time = time.time()
                        os.kill(lines[-1]["pid"], signal.SIGKILL)
                time.sleep(0.01)
            if proc.poll() is None:
                proc.kill()
            code = proc.wait(30)
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            tail = fh.read()
        progress = [line for r in range(4) for line in _read_progress(workdir, r)]
        restart_lower_bound_s = (
            cold_restart(workdir, steps, ckpt_every) if kill_time is not None else None
        )
    if kill_time is None:
        return {
            "mttr_s": None,
            "lost_steps": None,
            "recovered": False,
            "error": f"the run ended (code {code}) before rank 2 reached step {kill_at}",
        }
    after = [p for p in progress if p["restart"] > 0]
    if code != 0 or not after:
        return {
            "mttr_s": None,
            "lost_steps": None,
            "recovered": False,
            "error": f"torchrun exited with {code} after the kill: {_root_error(tail)}",
            "restart_lower_bound_s": restart_lower_bound_s,
            "killed_at_step": killed_step,
        }
    first_step = min(p["step"] for p in after)
    first_end = max(p["wall"] for p in after if p["step"] == first_step)
    resumed_from = after[0]["resumed_from"]
    before = [p for p in progress if p["restart"] == 0 and p["wall"] <= kill_time]
    last_by_rank: dict[int, int] = {}
    for p in before:
        last_by_rank[p["rank"]] = max(last_by_rank.get(p["rank"], 0), p["step"])
    # committed: every rank had applied it when the kill came
    committed_at_kill = min(last_by_rank.values()) if len(last_by_rank) == 4 else 0
    regained = [p["wall"] for p in after if p["step"] == committed_at_kill]
    return {
        "mttr_s": round(first_end - kill_time, 4),
        "lost_steps": max(0, committed_at_kill - resumed_from),
        "time_to_regain_s": round(max(regained) - kill_time, 4) if regained else None,
        "killed_at_step": killed_step,
        "resumed_from_step": resumed_from,
        "recovered": True,
        "error": "",
    }


def _root_error(log: str) -> str:
    """The last error line that names a cause: the one that ended the final restart
    (the first ones are the survivors noticing the kill, which is expected)."""
    causes = [ln for ln in log.splitlines() if "RuntimeError:" in ln or "RendezvousError" in ln]
    return causes[-1].strip()[:300] if causes else log[-300:]


def cold_restart(workdir: str, steps: int, ckpt_every: int) -> float | None:
    """A lower bound of what a working torchrun restart costs: launch torchrun fresh on
    the checkpoint the failed run left, and time until its first step ends. It leaves
    out failure detection and stopping the old workers, so a real restart is slower."""
    if not os.path.exists(os.path.join(workdir, "ckpt.pt")):
        return None
    for r in range(4):
        path = os.path.join(workdir, f"progress-{r}.jsonl")
        if os.path.exists(path):
            os.remove(path)
    cmd = torchrun_cmd(workdir, steps, ckpt_every, max_restarts=0)
    start = time.time()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ends = [p["wall"] for r in range(4) for p in _read_progress(workdir, r)[:1]]
            if len(ends) == 4:
                return round(max(ends) - start, 4)
            if proc.poll() is not None:
                return None
            time.sleep(0.01)
        return None
    finally:
        proc.kill()
        proc.wait(30)


def median(values: list[Any]) -> Any:
    clean = [v for v in values if v is not None]
    return round(statistics.median(clean), 4) if clean else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--kill-at", type=int, default=25)
    parser.add_argument("--ckpt-every", type=int, default=10)
    parser.add_argument(
        "--zero",
        type=int,
        default=0,
        choices=(0, 1, 2),
        help="ZeRO stage of the elastiq side (the lost interval then comes "
        "from its buddy's snapshot)",
    )
    parser.add_argument("--elastiq-only", action="store_true", help="skip the torchrun baseline")
    add_model_args(parser)
    args = parser.parse_args()
    OVERRIDES.update(job_overrides(args))
    if args.reps < 1 or not 0 < args.kill_at < args.steps:
        raise SystemExit("need reps >= 1 and 0 < kill-at < steps")
    ours, theirs = [], []
    for rep in range(args.reps):
        e = run_elastiq(args.steps, args.kill_at, args.zero)
        print(f"rep {rep + 1}/{args.reps} elastiq: {json.dumps(e)}", flush=True)
        ours.append(e)
        if args.elastiq_only:
            continue
        t = run_torchrun(args.steps, args.kill_at, args.ckpt_every)
        print(f"rep {rep + 1}/{args.reps} torchrun: {json.dumps(t)}", flush=True)
        theirs.append(t)
    elastiq = {
        "mttr_s": median([r["mttr_s"] for r in ours]),
        "comm_rebuild_s": median([r.get("comm_rebuild_s") for r in ours]),
        "lost_steps": median([r.get("lost_steps") for r in ours]),
        "survivors_restarted": max((r.get("survivors_restarted", 0) for r in ours), default=0),
        "reps": args.reps,
    }
    elastiq["zero"] = args.zero
    if args.elastiq_only:
        print(json.dumps({"elastiq": elastiq, "torchrun": None, "speedup": None}))
        return
    recovered = all(r["recovered"] for r in theirs)
    torchrun = {
        "mttr_s": median([r["mttr_s"] for r in theirs]),
        "lost_steps": median([r["lost_steps"] for r in theirs]),
        "time_to_regain_s": median([r.get("time_to_regain_s") for r in theirs]),
        "recovered": recovered,
        "error": "; ".join(dict.fromkeys(r["error"] for r in theirs if r["error"])),
        "reps": args.reps,
    }
    torchrun["restart_lower_bound_s"] = median([r.get("restart_lower_bound_s") for r in theirs])
    speedup = (
        round(torchrun["mttr_s"] / elastiq["mttr_s"], 2)
        if torchrun["mttr_s"] and elastiq["mttr_s"]
        else None
    )
    bound = torchrun["restart_lower_bound_s"]
    result = {
        "elastiq": elastiq,
        "torchrun": torchrun,
        "speedup": speedup,
        # against the best case of a restart (see cold_restart); null if it could not run
        "speedup_vs_restart_lower_bound": (
            round(bound / elastiq["mttr_s"], 2) if bound and elastiq["mttr_s"] else None
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
