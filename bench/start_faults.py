"""Failures before the first step (issue 17): the issue's scenario, measured.

`elastiq run --workers 6 --pipeline-stages 2 --zero 1` starts; as soon as the six
workers exist (long before any is ready), faults are sent from outside by pid, as a
user sends them: node0's worker SIGKILLed, node1's worker SIGSTOPped, node5's agent
SIGKILLed. The job must start and finish on its own. Each round also runs the same
job without faults, interleaved, so the cost of the faults is the difference.

Prints per round the seconds from launch to the first plan and to the end, the
outcome, and the start-up events the run printed; the last line is JSON.

    python bench/start_faults.py            # 2 rounds (about 2 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from elastiq.child_processes import child_pids

ARGS = ["--workers", "6", "--pipeline-stages", "2", "--zero", "1", "--steps", "30"]
STARTUP_EVENTS = ("worker_exited", "worker_restarting", "worker_hung", "node_lost", "waiting")


def one_run(faults: bool, workdir: str, tag: str) -> dict[str, Any]:
    """One `elastiq run`, with or without the faults; what it took and printed."""
    job = f"start-faults-{tag}"
    cmd = [sys.executable, "-m", "elastiq.cli", "run", *ARGS, "--job", job]
    cmd += ["--run-dir", os.path.join(workdir, job)]
    t0 = time.monotonic()
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sent: list[str] = []
    try:
        if faults:
            deadline = time.monotonic() + 60
            agents: list[int] = []
            while time.monotonic() < deadline:
                agents = child_pids(run.pid)
                workers = [child_pids(a) for a in agents]
                if len(agents) == 6 and all(workers):
                    break
                time.sleep(0.01)
            else:
                raise TimeoutError("the six workers did not start")
            os.kill(workers[0][0], signal.SIGKILL)
            os.kill(workers[1][0], signal.SIGSTOP)
            os.kill(agents[5], signal.SIGKILL)
            sent = [
                f"SIGKILL worker {workers[0][0]} (node0) at {time.monotonic() - t0:.2f}s",
                f"SIGSTOP worker {workers[1][0]} (node1)",
                f"SIGKILL agent {agents[5]} (node5)",
            ]
        first_plan = None
        lines = []
        assert run.stdout is not None
        for line in run.stdout:
            lines.append(line.rstrip())
            if first_plan is None and "plan: generation 1:" in line:
                first_plan = time.monotonic() - t0
        code = run.wait(600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    ended = time.monotonic() - t0
    outcome = next((ln.split(": ")[1] for ln in lines if ln.startswith(f"job {job}:")), "?")
    steps = next((ln.split()[-1] for ln in lines if ln.strip().startswith("steps ")), "?")
    events = [
        re.sub(r"^\[[0-9:]+\] ", "", ln)
        for ln in lines
        if any(f": {kind}: " in ln for kind in STARTUP_EVENTS) or "agent exited" in ln
    ]
    return {
        "faults": faults,
        "exit_code": code,
        "outcome": outcome,
        "steps": steps,
        "first_plan_s": round(first_plan, 2) if first_plan is not None else None,
        "end_s": round(ended, 2),
        "sent": sent,
        "events": events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="elastiq-start-faults-") as workdir:
        for r in range(args.rounds):
            for faults in (False, True):
                res = one_run(faults, workdir, f"{r}-{'faults' if faults else 'clean'}")
                results.append(res)
                print(
                    f"round {r} {'faults' if faults else 'clean '}: {res['outcome']} "
                    f"({res['steps']} steps), first plan at {res['first_plan_s']}s, "
                    f"ended at {res['end_s']}s",
                    flush=True,
                )
                for line in res["sent"] + res["events"]:
                    print(f"    {line}", flush=True)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    faulty = [r for r in results if r["faults"]]
    clean = [r for r in results if not r["faults"]]
    summary = {
        "rounds": args.rounds,
        "all_finished": all(r["outcome"] == "Succeeded" for r in results),
        "first_plan_s": {
            "clean": med([r["first_plan_s"] or 0 for r in clean]),
            "faults": med([r["first_plan_s"] or 0 for r in faulty]),
        },
        "end_s": {
            "clean": med([r["end_s"] for r in clean]),
            "faults": med([r["end_s"] for r in faulty]),
        },
        "runs": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
