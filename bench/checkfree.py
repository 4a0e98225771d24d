"""CheckFree convergence study: how a lost stage's rebuild rule affects training.

A small decoder (6 transformer blocks, each its own pipeline stage, plus the
embedding and head, which do not fail here) trains in one process on the real
text corpus (elastiq's default: Python's standard library as bytes; the last 10%
is held out for validation). Each block-stage fails with probability p per step;
one failure schedule is shared by every method:

- none: no failures;
- checkfree: the lost block becomes the average of its neighbouring blocks,
  weighted by their stages' clipped gradient norms at the last step; fresh
  moments; its learning rate x1.1 from then on;
- equal_average: the same with equal weights;
- copy: the neighbouring block is copied (the previous one; the next for the
  first block);
- random: the block is re-initialised;
- checkfree_plus: trained the CheckFree+ way (every odd micro-batch runs block 2
  before block 1 and block 6 before block 5); a lost first or last block is the
  copy of its swapped partner, any other block is rebuilt as by checkfree;
- rollback_10 / rollback_50: the whole state rolls back to the last checkpoint
  (taken every 10 / 50 steps) and the lost steps are recomputed; the measured time
  of each save and reload is charged (torch.save into host memory: the cheapest
  checkpoint there is, so rollback is shown at its best).

The first and last blocks have one block neighbour only, so every other rebuild
rule copies it there, from a neighbour that never ran in its place. Each method
runs until S steps are committed. Prints JSON on the last line: validation loss
after S steps, and wall-clock seconds until the validation loss (every 10 steps)
first reaches the target.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import random
import time
from typing import Any

import torch
import torch.distributed as dist

from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.data.byte_corpus import ByteCorpus, load_corpus
from elastiq.agent.runtime.data.sample_order import SampleOrder
from elastiq.agent.runtime.trainer import TrainState, run_step
from elastiq.checkpoint.checkfree import SwapGroups, average, unit_order, weights
from elastiq.config import JobConfig, ModelConfig
from elastiq.partition import element_offsets

METHODS = (
    "none",
    "checkfree",
    "checkfree_plus",
    "equal_average",
    "copy",
    "random",
    "rollback_10",
    "rollback_50",
)


def schedule(steps: int, blocks: int, p: float, seed: int) -> dict[int, list[int]]:
    """{step: [block units failing after that step]}, shared by all methods."""
    rng = random.Random(seed)
    out: dict[int, list[int]] = {}
    for step in range(1, steps + 1):
        lost = [u for u in range(1, blocks + 1) if rng.random() < p]
        if lost:
            out[step] = lost
    return out


class Study:
    def __init__(self, cfg: JobConfig, corpus: torch.Tensor) -> None:
        self.cfg = cfg
        cut = int(corpus.numel() * 0.9)
        self.train = SampleOrder(ByteCorpus(corpus[:cut]), cfg.seq_len, cfg.seed)
        self.val = SampleOrder(ByteCorpus(corpus[cut:]), cfg.seq_len, cfg.seed + 1)
        self.sizes = cfg.unit_numel()
        self.bounds = element_offsets(self.sizes)
        pg = dist.ProcessGroupGloo(dist.HashStore(), 0, 1, datetime.timedelta(seconds=60))
        self.group = Group(pg, 0, 1, 1, 60.0, lambda: False)

    def block(self, state: TrainState, u: int) -> torch.Tensor:
        return state.flat.data[self.bounds[u] : self.bounds[u + 1]]

    def unit_norms(self, state: TrainState) -> list[float]:
        g = state.flat.grad  # clipped in place by the step
        return [
            float(g[self.bounds[u] : self.bounds[u + 1]].norm()) for u in range(len(self.sizes))
        ]

    @torch.no_grad()
    def validation_loss(self, state: TrainState, batches: int = 8) -> float:
        total = 0.0
        n = self.cfg.global_batch
        for b in range(batches):
            total += float(state.loss_of(self.val.samples(b * n, n), 0, b * n).mean())
        return total / batches

    def rebuild(
        self, state: TrainState, method: str, u: int, norms: list[float], gen: torch.Generator
    ) -> None:
        blocks = self.cfg.model.n_layers
        prev = u - 1 if u > 1 else None
        nxt = u + 1 if u < blocks else None
        target = self.block(state, u)
        if method == "random":
            target.normal_(0.0, 0.02, generator=gen)
        elif method == "checkfree_plus" and (prev is None or nxt is None):
            target.copy_(self.block(state, u + 1 if prev is None else u - 1))  # swapped partner
        elif method == "copy" or prev is None or nxt is None:
            target.copy_(self.block(state, prev if prev is not None else nxt))  # type: ignore[arg-type]
        else:
            weighted = method in ("checkfree", "checkfree_plus")
            a, b = weights(norms[nxt], norms[prev]) if weighted else (1.0, 1.0)
            target.copy_(average(self.block(state, nxt), self.block(state, prev), a, b))
        lo, hi = self.bounds[u], self.bounds[u + 1]
        state.opt.exp_avg[lo:hi].zero_()
        state.opt.exp_avg_sq[lo:hi].zero_()

    def run(self, method: str, steps: int, failures: dict[int, list[int]]) -> dict[str, Any]:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        state = TrainState(self.cfg)
        every = int(method.split("_")[1]) if method.startswith("rollback") else 0
        saved: bytes | None = None
        charged = 0.0
        scaled: set[int] = set()
        curve: list[tuple[int, float, float]] = []
        t0 = time.perf_counter()
        step, applied = 0, 0
        pending = dict(failures)
        orders = None
        if method == "checkfree_plus":
            groups = SwapGroups(blocks=self.cfg.model.n_layers, first=1, last=1)
            units = len(self.sizes)
            orders = [unit_order(units, mb, groups) for mb in range(self.cfg.micro_batches)]
        while step < steps:
            step += 1
            applied += 1
            run_step(state, self.group, self.train, step, want_switch=False, orders=orders)
            norms = self.unit_norms(state)
            if every and step % every == 0:
                t = time.perf_counter()
                buf = io.BytesIO()
                torch.save((state.flat.data, state.opt.exp_avg, state.opt.exp_avg_sq), buf)
                saved = buf.getvalue()
                charged += time.perf_counter() - t
            lost = pending.pop(step, []) if method != "none" else []
            if lost and every:
                t = time.perf_counter()
                if saved is None:
                    state = TrainState(self.cfg)
                    step = 0
                else:
                    data, m, v = torch.load(io.BytesIO(saved), weights_only=True)
                    state.flat.data.copy_(data)
                    state.opt.exp_avg.copy_(m)
                    state.opt.exp_avg_sq.copy_(v)
                    step = step // every * every
                    state.step = state.opt.step_count = step
                charged += time.perf_counter() - t
            elif lost:
                for u in lost:
                    self.rebuild(state, method, u, norms, gen)
                    if method in ("checkfree", "checkfree_plus"):
                        scaled.add(u)
                state.scale_lr_of_units(sorted(scaled), 1.1)
            if step % 10 == 0 and not lost:
                val = self.validation_loss(state)
                wall = time.perf_counter() - t0
                curve.append((step, val, wall))
        return {
            "val_loss": round(curve[-1][1], 4) if curve else None,
            "wall_s": round(time.perf_counter() - t0, 2),
            "steps_computed": applied,
            "checkpoint_time_s": round(charged, 3),
            "curve": curve,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--p", type=float, default=0.02, help="failure probability per stage per step"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = JobConfig(
        job="bench-checkfree",
        steps=args.steps,
        global_batch=16,
        micro_batch=8,  # two micro-batches: CheckFree+ swaps the second
        seq_len=64,
        lr=3e-3,
        warmup_steps=20,
        model=ModelConfig(dim=64, n_layers=6, n_heads=4),
    )
    study = Study(cfg, load_corpus(cfg.data, cfg.data_max_bytes))
    failures = schedule(args.steps, cfg.model.n_layers, args.p, args.seed)
    print(f"{sum(len(v) for v in failures.values())} stage failures over {args.steps} steps")
    results: dict[str, Any] = {"none": study.run("none", args.steps, failures)}
    # the target: the failure-free run's validation loss at 60% of the steps
    target_step = int(args.steps * 0.6) // 10 * 10
    target = next(v for s, v, _ in results["none"]["curve"] if s == target_step)
    print(f"none: {results['none']['val_loss']} (target {target:.4f}, its step {target_step})")
    for method in [m for m in args.methods.split(",") if m != "none"]:
        results[method] = r = study.run(method, args.steps, failures)
        print(f"{method}: val {r['val_loss']} wall {r['wall_s']}s")
    for r in results.values():
        r["wall_to_target_s"] = next((round(w, 2) for _, v, w in r["curve"] if v <= target), None)
    order = {m: results[m]["val_loss"] for m in results}
    summary = {
        "steps": args.steps,
        "p": args.p,
        "failures": sum(len(v) for v in failures.values()),
        "target_val_loss": round(target, 4),
        "val_loss": order,
        "wall_to_target_s": {m: results[m]["wall_to_target_s"] for m in results},
        "checkpoint_time_s": {m: results[m]["checkpoint_time_s"] for m in results},
        "steps_computed": {m: results[m]["steps_computed"] for m in results},
        "val_curve": {
            m: [(s, round(v, 3)) for s, v, _ in results[m]["curve"][4::5]] for m in results
        },
        "ordering_holds": {
            "checkfree<=copy": _le(order.get("checkfree"), order.get("copy")),
            "checkfree_plus<=checkfree": _le(order.get("checkfree_plus"), order.get("checkfree")),
            "copy<random": _lt(order.get("copy"), order.get("random")),
        },
    }
    print(json.dumps(summary))


def _le(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a <= b


def _lt(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a < b


if __name__ == "__main__":
    main()
