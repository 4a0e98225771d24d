"""What checkpointing costs a real elastiq job (issue 16): `python bench/ckpt.py --e2e`.

Runs `elastiq run` (4 workers, in this process's machine) on the same job with
checkpoints off, every 50, every 10 and every step, for DP with ZeRO-1 and for
PP2 x DP2, in interleaved rounds (round k runs every configuration once: this VM
drifts by more than the margin measured). Throughput is tokens over the wall time
from the end of the warm-up step to the last step on rank 0 (its step log), so a
checkpoint's cost counts whenever it lands, not only on the step that saved.
slowdown = 1 - tokens/s with checkpoints / tokens/s without, the median over rounds
of the within-round ratio.

Where the time goes, from every rank's step log (cumulative engine figures): the
loop held by saves (the call and the wait for copies before the next update), and
the background's copy, checksum and write seconds, which compete with training for
the same two cores. Checkpoints skipped because the previous one was still being
written are counted (the engine never queues them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from typing import Any

from elastiq.cli.local_run import run_local
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.config import JobConfig, ModelConfig

LAYOUTS = {"dp_zero1": (1, 1), "pp2_dp2": (2, 1)}
EVERY = (0, 50, 10, 1)


def job(steps: int, stages: int, zero: int, every: int, work: str, args: Any) -> JobConfig:
    return JobConfig(
        job="bench-ckpt-e2e",
        steps=steps,
        pipeline_stages=stages,
        zero=zero,
        global_batch=args.global_batch,
        micro_batch=args.micro_batch,
        seq_len=args.seq_len,
        model=ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads),
        checkpoint_url=os.path.join(work, "ckpt") if every else "",
        checkpoint_every=every,
        checkpoint_keep=2,
        step_log=os.path.join(work, "steps"),
    )


def run_once(stages: int, zero: int, every: int, args: Any) -> dict[str, Any]:
    """One `elastiq run`; tokens/s on rank 0 after the warm-up, and every rank's
    checkpoint figures at the end."""
    with tempfile.TemporaryDirectory(prefix="elastiq-ckpt-e2e-") as work:
        cfg = job(args.steps, stages, zero, every, work, args)
        with open(os.devnull, "w", encoding="utf-8") as quiet:
            summary = run_local(cfg, LocalRunConfig(workers=4, run_dir=work), out=quiet)
        if not summary.succeeded:
            raise RuntimeError(f"elastiq run failed: {summary.error}")
        ranks: dict[int, list[dict[str, Any]]] = {}
        for name in os.listdir(cfg.step_log):
            with open(os.path.join(cfg.step_log, name), encoding="utf-8") as fh:
                lines = [json.loads(line) for line in fh if line.strip()]
            if lines:
                ranks[lines[0]["rank"]] = lines
    first = ranks[0]
    start = next(x for x in first if x["step"] == args.warmup)
    last = first[-1]
    tokens = (last["step"] - start["step"]) * args.global_batch * args.seq_len
    out: dict[str, Any] = {"tokens_per_s": tokens / (last["wall"] - start["wall"])}
    if every:
        totals = [lines[-1].get("ckpt", {}) for lines in ranks.values()]
        for key in ("held_s", "copy_s", "checksum_s", "persist_s"):
            out[key] = sum(t.get(key, 0.0) for t in totals) / len(totals)  # per rank
        out["saves"] = max(t.get("saves", 0) for t in totals)
        out["skipped"] = max(t.get("skipped", 0) for t in totals)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--e2e", action="store_true", help="(how bench/ckpt.py gets here)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--every", default=",".join(map(str, EVERY)), help="0: off")
    args = parser.parse_args(argv)
    layouts = [name for name in args.layouts.split(",") if name]
    everies = [int(e) for e in args.every.split(",")]
    if 0 not in everies:
        everies.insert(0, 0)
    runs: dict[str, list[dict[str, Any]]] = {}
    for rnd in range(args.rounds):
        for name in layouts:
            stages, zero = LAYOUTS[name]
            for every in everies:
                key = f"{name}/every_{every}" if every else f"{name}/off"
                got = run_once(stages, zero, every, args)
                runs.setdefault(key, []).append(got)
                extra = (
                    f", held {got['held_s']:.2f}s, copy {got['copy_s']:.2f}s, checksum "
                    f"{got['checksum_s']:.2f}s, write {got['persist_s']:.2f}s per rank, "
                    f"{got['saves']} saves, {got['skipped']} skipped"
                    if every
                    else ""
                )
                rate = f"{got['tokens_per_s']:.0f} tokens/s"
                print(f"round {rnd + 1}/{args.rounds} {key}: {rate}{extra}", flush=True)
    result: dict[str, Any] = {
        "model": {"dim": args.dim, "layers": args.layers, "heads": args.heads},
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
    }
    for name in layouts:
        off = runs[f"{name}/off"]
        rows: dict[str, Any] = {
            "off_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in off))
        }
        for every in everies:
            if not every:
                continue
            mine = runs[f"{name}/every_{every}"]
            pairs = zip(mine, off, strict=True)
            slow = [1 - m["tokens_per_s"] / o["tokens_per_s"] for m, o in pairs]
            rows[f"every_{every}"] = {
                "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in mine)),
                "slowdown": round(statistics.median(slow), 4),
                "slowdown_per_round": [round(x, 4) for x in slow],
                "per_rank_s": {
                    k: round(statistics.median(r[k] for r in mine), 3)
                    for k in ("held_s", "copy_s", "checksum_s", "persist_s")
                },
                "saves": statistics.median(r["saves"] for r in mine),
                "skipped": statistics.median(r["skipped"] for r in mine),
            }
        result[name] = rows
    result["target"] = "slowdown <= 0.03 at every 10 steps"
    result["met"] = {
        name: result[name]["every_10"]["slowdown"] <= 0.03
        for name in layouts
        if "every_10" in result[name]
    }
    print(json.dumps(result))
