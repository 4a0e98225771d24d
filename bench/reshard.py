"""Online resharding: change the membership of a PP x DP job and measure the change.

For PP2xDP2 (4 workers) and PP4xDP2 (8 workers), ZeRO-1, the cases are:
- kill-worker: SIGKILL one worker of a middle position at step KILL_AT as it reports
  the step (wherever its snapshot transfer happens to be);
- kill-before-snapshot: the same worker dies right after its update, before its
  snapshot leaves (the worst moment, which a replay must cover for lost_steps to
  stay 0);
- stage-lost (PP4xDP2): both workers of stage 1 are SIGKILLed at KILL_AT, so no live
  replica holds its layers: they come from the buddies on stage 2, and the job goes
  on with 3 stages of 2;
- scale-out (PP4xDP2 on 4 nodes of 2 workers): a fifth node starts at step KILL_AT
  (`elastiq run --add-node-at`) and its 2 workers join the running job (10 workers);
- scale-out-1 (not run by default): the same with nodes of one worker (9 workers).
  No 4-stage layout of this model's 8 layer units runs 9 workers faster than 8 (a
  third replica of a stage runs 6 of the 16 micro-batches, not 5.3), so the cost
  model itself predicts 8/9 at best: it shows the limit, not the runtime;
and each reports
- mttr_s split by phase (detect, plan, deliver, comm_rebuild, migrate, resume),
  from the controller's recovery record;
- migrated_bytes: what the plan's moves carried (params 4 B/element, moments 8);
- min_bytes: the state that existed only on the lost worker (what its buddy had to
  provide): no recovery can move less;
- throughput_before / throughput_after (tokens/s, from rank 0's step log, medians
  of the steps between warm-up and the kill, and after the change);
- post_change_efficiency = after / (before x workers after / workers before).

Why that last figure alone cannot be trusted here (issue 18): 8 processes share 2
cores, so wall-clock tokens/s says how the OS shared the cores at least as much as
what the layout costs. So each run also reports, from every rank's step log, the
step's own clocks (agent/runtime/worker._Clocks): this thread's CPU time of the
forward, backward and update (`cpu_s`), the time it waited on pipeline neighbours
(`p2p_wait_s`: the bubble and the transfers) and on collectives, per stage, before
and after the change. From those, what the layout predicts on dedicated cores: the
step takes at least its busiest rank's CPU time (`bottleneck_cpu_s`), so
`cpu_efficiency` = bottleneck before / (bottleneck after x workers after / workers
before). The
whole job's CPU per step (`total_cpu_s`) says what the change added in work.

`cpu_efficiency` still carries the machine's speed: this VM's cores change speed
under us (the same rank's same step cost 0.054 s of CPU in one run, 0.07-0.10 s in
another), and before and after are windows a minute apart. `balance_efficiency`
takes the speed out with the job's own clock: the busiest rank's share of the whole
job's CPU per step, measured in each window, so a factor that slows every rank alike
cancels. It is bottleneck share before / (share after x workers after / workers
before): 1.0 when both layouts spread the same work equally well. It assumes the
job's total work per step stays the same across the change, which `total_cpu_ratio`
(the job's CPU per step after / before) shows: a new layout that adds work (more
transfers, a duplicated update) would flatter it, and shows there as a ratio above 1.

Beside the measured figures, `predicted_efficiency` is the planner's cost model
(`stages.predicted_step_s`: the busiest replica's micro-batches times its stage's
measured forward+backward time, plus the pipeline's fill and drain) on the layouts
before and after, both with the job's final measured unit costs.

Every case runs --rounds times, interleaved; the summary gives each figure's median
and spread (min, max).
Prints progress lines, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from typing import Any

from elastiq.cli.chaos_spec import ChaosSpec
from elastiq.cli.local_run import run_local_async
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.cli.summary import RunSummary
from elastiq.config import JobConfig, ModelConfig
from elastiq.controller.stages import predicted_step_s
from elastiq.proto import elastiq_pb2 as pb

LAYOUTS = {"PP2xDP2": (2, 4, 1), "PP4xDP2": (4, 8, 3)}  # stages, workers, victim rank
SCALE_OUT_EXTRA_STEPS = 30
CHANGES = ("kill-worker", "kill-before-snapshot", "stage-lost", "scale-out", "scale-out-1")
DEFAULT_CASES = (
    "PP2xDP2/kill-worker,PP2xDP2/kill-before-snapshot,PP4xDP2/kill-worker,"
    "PP4xDP2/kill-before-snapshot,PP4xDP2/stage-lost,PP4xDP2/scale-out"
)


N_LAYERS = 6
#: the model's identical transformer blocks (unit 0 is the embedding, the last the head)
BLOCK_UNITS = range(1, N_LAYERS + 1)


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
        model=ModelConfig(dim=64, n_layers=N_LAYERS, n_heads=4),
    )


def _tokens_per_s(walls: list[float], tokens_per_step: int) -> float | None:
    gaps = [b - a for a, b in itertools.pairwise(walls)]
    return round(tokens_per_step / statistics.median(gaps), 1) if gaps else None


class MachineLoad:
    """Samples /proc/stat (Linux) every 0.25 s while a run goes on, so that a window of
    steps can be told apart: cores busy with the job, busy with something else, or
    idle while the job waited. A wall-clock drop with the job's own CPU per step
    unchanged is either the layout waiting on itself (idle cores) or another process
    taking them (busy cores the workers did not use)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int, int]] = []  # wall, busy, total, steal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def __enter__(self) -> MachineLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with open("/proc/stat", encoding="ascii") as fh:
                    fields = [int(x) for x in fh.readline().split()[1:]]
            except (OSError, ValueError):
                return
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
            steal = fields[7] if len(fields) > 7 else 0
            total = sum(fields[:8])
            self.samples.append((time.time(), total - idle, total, steal))
            self._stop.wait(0.25)

    def window(self, t0: float, t1: float) -> dict[str, float] | None:
        """Cores busy (of all), and stolen by the hypervisor, between walls t0 and t1."""
        inside = [x for x in self.samples if t0 <= x[0] <= t1]
        if len(inside) < 2:
            return None
        (_, b0, n0, s0), (_, b1, n1, s1) = inside[0], inside[-1]
        cores = os.cpu_count() or 1
        if n1 == n0:
            return None
        return {
            "busy_cores": round(cores * (b1 - b0) / (n1 - n0), 2),
            "steal_cores": round(cores * (s1 - s0) / (n1 - n0), 2),
        }


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 6) if xs else None


def _clocks(entries: list[dict[str, Any]], plan: pb.Plan, keep: Any) -> dict[str, Any]:
    """Per stage of `plan`: the median over the kept steps of each rank's clocks,
    averaged over the stage's ranks; and the layout's bottleneck and total CPU."""
    by_rank: dict[int, list[dict[str, float]]] = {}
    for e in entries:
        if keep(e) and "times" in e:
            by_rank.setdefault(e["rank"], []).append(e["times"])
    stages = []
    for i, st in enumerate(plan.stages):
        ranks = [r for r in st.ranks if r in by_rank]
        per = {
            key: [_median([t[key] for t in by_rank[r]]) or 0.0 for r in ranks]
            for key in ("cpu_s", "process_cpu_s", "wall_s", "p2p_wait_s", "collective_wait_s")
        }
        stages.append(
            {
                "stage": i,
                "replicas": len(st.ranks),
                "units": [st.unit_lo, st.unit_hi],
                **{k: round(statistics.mean(v), 4) if v else None for k, v in per.items()},
            }
        )
    cpus = [_median([t["cpu_s"] for t in ts]) or 0.0 for ts in by_rank.values()]
    speeds = _block_speeds(entries, keep)
    # cores the workers themselves kept busy: each rank's CPU over its wall, summed
    used = sum(
        (_median([t["process_cpu_s"] for t in ts]) or 0.0)
        / (_median([t["wall_s"] for t in ts]) or 1)
        for ts in by_rank.values()
    )
    # the same CPU in "work": each rank's CPU over its blocks' speed factor; none
    # where a rank's speed was not measured (no block, or no per-unit clocks)
    ranks = list(by_rank)
    measured = all(r in speeds for r in ranks)
    work = [c / speeds[r] for r, c in zip(ranks, cpus, strict=True)] if measured else []
    busiest = ranks[cpus.index(max(cpus))] if cpus else None
    return {
        "workers_cores": round(used, 2),
        "stages": stages,
        "bottleneck_cpu_s": round(max(cpus), 4) if cpus else None,
        "total_cpu_s": round(sum(cpus), 4) if cpus else None,
        "busiest_block_speed": round(speeds[busiest], 3) if busiest in speeds else None,
        "bottleneck_work_s": round(max(work), 4) if work else None,
        "total_work_s": round(sum(work), 4) if work else None,
    }


def _block_speeds(entries: list[dict[str, Any]], keep: Any) -> dict[int, float]:
    """Each rank's forward CPU of one block for one micro-batch, over the window's
    typical rank's: 1.0 for a rank that computes a block as fast as the job's typical
    rank, 1.2 for one that takes a fifth longer. The model's blocks (BLOCK_UNITS) are
    identical, so this compares the same work on different ranks in the same window.
    The first block a rank runs for a micro-batch is slower than the next on every
    rank (0.1-0.3 ms, measured: it starts on data another thread just wrote), so
    first blocks are compared with first blocks and the others with the others; a
    rank's factor is the mean of its two ratios (one, when it runs a single block)."""
    first: dict[int, list[float]] = {}
    later: dict[int, list[float]] = {}
    for e in entries:
        if not keep(e) or "unit_forward_s" not in e:
            continue
        ran = sorted(int(u) for u in e["unit_forward_s"] if int(u) in BLOCK_UNITS)
        if ran:
            first.setdefault(e["rank"], []).append(e["unit_forward_s"][str(ran[0])])
        if len(ran) > 1:
            rest = [e["unit_forward_s"][str(u)] for u in ran[1:]]
            later.setdefault(e["rank"], []).append(statistics.mean(rest))
    ratios: dict[int, list[float]] = {}
    for per_rank in (first, later):
        medians = {r: statistics.median(v) for r, v in per_rank.items()}
        typical = statistics.median(medians.values()) if medians else 0.0
        for r, m in medians.items():
            if typical > 0:
                ratios.setdefault(r, []).append(m / typical)
    return {r: statistics.mean(v) for r, v in ratios.items()}


def _balance_efficiency(
    before: dict[str, Any], after: dict[str, Any], ratio: float, of: str = "cpu"
) -> float | None:
    """The busiest rank's share of the job's CPU per step before, over the same share
    after x workers after / before: what the layouts' balance is worth, with the
    machine's speed in each window cancelled by the job's own total. of="work": the
    same with each rank's CPU divided by its block speed (`_block_speeds`), which
    also cancels a speed that differs between ranks of one window."""
    top, total = f"bottleneck_{of}_s", f"total_{of}_s"
    if not (before.get(total) and after.get(total) and after.get(top)):
        return None
    share_before = before[top] / before[total]
    share_after = after[top] / after[total]
    return round(share_before / (share_after * ratio), 3)


def _change(layout: str, change: str, kill_at: int, tmp: str) -> LocalRunConfig:
    """The local run that makes `change` happen to `layout`."""
    stages, workers, victim = LAYOUTS[layout]
    if change in ("kill-worker", "kill-before-snapshot"):
        return LocalRunConfig(
            workers=workers, run_dir=tmp, chaos=[ChaosSpec(change, rank=victim, step=kill_at)]
        )
    if change == "stage-lost":
        # the first plan gives stage s ranks [s*d, (s+1)*d) (even split in rank order)
        per_stage = workers // stages
        first = victim // per_stage * per_stage
        chaos = [
            ChaosSpec("kill-worker", rank=r, step=kill_at) for r in range(first, first + per_stage)
        ]
        return LocalRunConfig(workers=workers, run_dir=tmp, chaos=chaos)
    if change in ("scale-out", "scale-out-1"):
        # the node starts at KILL_AT like the faults, so the steps before are the same
        # window; its agent and workers then take seconds to start (torch's import on
        # busy cores, which also slows the others: no step from then until the join
        # counts), so this case runs SCALE_OUT_EXTRA_STEPS more steps
        per_node = 2 if change == "scale-out" else 1
        return LocalRunConfig(
            workers=workers, workers_per_node=per_node, run_dir=tmp, add_nodes_at=[kill_at]
        )
    raise ValueError(f"change {change!r}: expected one of {CHANGES}")


def measure(layout: str, change: str, steps: int, kill_at: int, warmup: int) -> dict[str, Any]:
    import asyncio

    stages, workers, _ = LAYOUTS[layout]
    if change.startswith("scale-out"):
        steps += SCALE_OUT_EXTRA_STEPS
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
        cfg = job_config(stages, steps, os.path.join(tmp, "steps"))
        captured: dict[str, pb.StatusResponse] = {}
        local = _change(layout, change, kill_at, tmp)

        async def main() -> RunSummary:
            return await run_local_async(cfg, local, out=quiet, on_status=_keep(captured))

        with MachineLoad() as load:
            summary = asyncio.run(main())
        if not summary.succeeded or not summary.recoveries:
            return {"error": summary.error or f"phase {summary.phase}"}
        lines = []
        for name in os.listdir(cfg.step_log):
            with open(os.path.join(cfg.step_log, name), encoding="utf-8") as fh:
                lines += [json.loads(line) for line in fh if line.strip()]
    rank0 = sorted((e for e in lines if e["rank"] == 0), key=lambda e: (e["generation"], e["step"]))
    tokens = cfg.global_batch * cfg.seq_len
    # the steps before the change: generation 1 from the warm-up to the fault, or to
    # the step at which the new node started
    changed_at = min((e["step"] for e in lines if e["generation"] > 1), default=kill_at)
    end_before = min(kill_at, changed_at)
    before = [e["wall"] for e in rank0 if e["generation"] == 1 and warmup <= e["step"] < end_before]
    after_all = [e["wall"] for e in rank0 if e["generation"] > 1]
    after = after_all[warmup // 2 :]
    plan = captured["final"].plan
    first_plan = captured["first"].plan
    moved = sum((m.hi - m.lo) * (4 if m.what == "params" else 8) for m in plan.moves)
    lower = sum(
        (m.hi - m.lo) * (4 if m.what == "params" else 8) for m in plan.moves if m.via == "buddy"
    )
    rec = summary.recoveries[0]
    t_before, t_after = _tokens_per_s(before, tokens), _tokens_per_s(after, tokens)
    ratio = len(plan.assignments) / len(first_plan.assignments)  # workers after / before
    last_gen = max(e["generation"] for e in lines)
    after_from = min((e["step"] for e in lines if e["generation"] == last_gen), default=0)
    clocks_before = _clocks(
        lines,
        first_plan,
        lambda e: e["generation"] == 1 and warmup <= e["step"] < end_before,
    )
    clocks_after = _clocks(
        lines,
        plan,
        lambda e: e["generation"] == last_gen and e["step"] >= after_from + warmup // 2,
    )
    b_before, b_after = clocks_before["bottleneck_cpu_s"], clocks_after["bottleneck_cpu_s"]
    if before:
        clocks_before["machine"] = load.window(before[0], before[-1])
    # the planner's cost model on both layouts, with the same (final) measured unit
    # costs: what the layouts themselves promise, without any machine in it
    costs = list(captured["final"].unit_costs_s)
    micro_batches = cfg.global_batch // cfg.micro_batch

    def predicted(p: pb.Plan) -> float | None:
        if not costs:
            return None
        ranges = [(st.unit_lo, st.unit_hi) for st in p.stages]
        return round(
            predicted_step_s(costs, ranges, [len(st.ranks) for st in p.stages], micro_batches), 4
        )

    p_before, p_after = predicted(first_plan), predicted(plan)
    if after:
        clocks_after["machine"] = load.window(after[0], after[-1])
    return {
        "workers": workers,
        "workers_after": len(plan.assignments),
        "changed_at_step": changed_at,
        "state_from": sorted({m.via for m in plan.moves}),
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
            round(t_after / (t_before * ratio), 3) if t_before and t_after else None
        ),
        "cpu_efficiency": (
            round(b_before / (b_after * ratio), 3) if b_before and b_after else None
        ),
        "balance_efficiency": _balance_efficiency(clocks_before, clocks_after, ratio),
        "work_balance_efficiency": _balance_efficiency(
            clocks_before, clocks_after, ratio, of="work"
        ),
        "busiest_block_speed_after": clocks_after["busiest_block_speed"],
        "total_cpu_ratio": (
            round(clocks_after["total_cpu_s"] / clocks_before["total_cpu_s"], 3)
            if clocks_before["total_cpu_s"] and clocks_after["total_cpu_s"]
            else None
        ),
        "predicted_step_before_s": p_before,
        "predicted_step_after_s": p_after,
        "predicted_efficiency": (
            round(p_before / (p_after * ratio), 3) if p_before and p_after else None
        ),
        "clocks_before": clocks_before,
        "clocks_after": clocks_after,
    }


def _keep(captured: dict[str, pb.StatusResponse]) -> Any:
    def on_status(status: pb.StatusResponse) -> None:
        if "first" not in captured and status.plan.generation == 1:
            captured["first"] = status
        captured["final"] = status

    return on_status


def _spread(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "all": []}
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "all": [round(v, 3) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--kill-at", type=int, default=45)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every case, interleaved")
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help=f"LAYOUT/CHANGE,... with LAYOUT in {sorted(LAYOUTS)}, CHANGE in {list(CHANGES)}",
    )
    args = parser.parse_args()
    cases = [tuple(c.split("/", 1)) for c in args.cases.split(",")]
    for case in cases:
        if len(case) != 2 or case[0] not in LAYOUTS or case[1] not in CHANGES:
            parser.error(f"--cases: {'/'.join(case)!r} is not LAYOUT/CHANGE ({args.cases!r})")
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for layout, change in cases:
            key = layout if change == "kill-worker" else f"{layout} {change}"
            run = measure(layout, change, args.steps, args.kill_at, args.warmup)
            runs.setdefault(key, []).append(run)
            brief = {
                k: run.get(k)
                for k in (
                    "post_change_efficiency",
                    "cpu_efficiency",
                    "balance_efficiency",
                    "work_balance_efficiency",
                    "busiest_block_speed_after",
                    "total_cpu_ratio",
                    "predicted_efficiency",
                    "mttr_s",
                    "phases_s",
                    "lost_steps",
                    "stages_after",
                    "state_from",
                    "changed_at_step",
                    "throughput_before",
                    "throughput_after",
                    "predicted_step_before_s",
                    "predicted_step_after_s",
                )
            }
            print(f"round {r} {key}: {json.dumps(brief)}", flush=True)
            for when in ("clocks_before", "clocks_after"):
                clocks = run.get(when, {})
                machine = clocks.get("machine")
                print(
                    f"    {when[7:]:>6} workers kept {clocks.get('workers_cores')} cores "
                    f"busy; the machine {machine}",
                    flush=True,
                )
                for st in clocks.get("stages", []):
                    print(f"    {when[7:]:>6} {json.dumps(st)}", flush=True)
    result: dict[str, Any] = {}
    for key, case_runs in runs.items():
        result[key] = {
            "rounds": len(case_runs),
            **{
                k: _spread(case_runs, k)
                for k in (
                    "post_change_efficiency",
                    "cpu_efficiency",
                    "balance_efficiency",
                    "work_balance_efficiency",
                    "busiest_block_speed_after",
                    "total_cpu_ratio",
                    "predicted_efficiency",
                    "mttr_s",
                    "lost_steps",
                )
            },
            "runs": case_runs,
        }
    result["targets"] = {"post_change_efficiency": 0.90, "lost_steps": 0, "mttr_s": 3.0}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
