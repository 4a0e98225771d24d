"""The plain-PyTorch pipeline baseline for bench/overhead.py: torch.distributed.pipelining.

Same layer units, data order, global batch and micro-batches as elastiq; stage s
holds the units elastiq's planner gives stage s (passed in), Schedule1F1B over the
micro-batches, torch.optim.AdamW per stage. Each rank appends one JSON line per
step to progress-<rank>.jsonl (wall clock), from which the benchmark takes step
times. Run by `torchrun --standalone --nproc-per-node S bench/pipelining_baseline.py`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B

from elastiq.agent.runtime.data.byte_corpus import ByteCorpus, load_corpus
from elastiq.agent.runtime.data.sample_order import SampleOrder
from elastiq.agent.runtime.models.decoder import build_unit
from elastiq.config import JobConfig
from elastiq.lr import lr_at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="JobConfig JSON")
    parser.add_argument("--units", required=True, help="JSON list of [lo, hi] per stage")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = JobConfig.from_json(args.config)
    units = json.loads(args.units)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    lo, hi = units[rank]
    module = nn.Sequential(
        *(build_unit(cfg.model, u, cfg.seq_len, cfg.seed) for u in range(lo, hi))
    )
    stage = PipelineStage(module, rank, world, torch.device("cpu"))

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # mean token loss of each sample, summed, over the global batch: as elastiq
        per = (
            nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            )
            .view(targets.shape[0], -1)
            .mean(1)
        )
        return per.sum() / cfg.global_batch

    schedule = Schedule1F1B(stage, cfg.micro_batches, loss_fn=loss_fn, scale_grads=False)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    order = SampleOrder(
        ByteCorpus(load_corpus(cfg.data, cfg.data_max_bytes)), cfg.seq_len, cfg.seed
    )
    progress = open(os.path.join(args.workdir, f"progress-{rank}.jsonl"), "a")  # noqa: SIM115
    for step in range(1, cfg.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps)
        opt.zero_grad()
        tokens = order.samples((step - 1) * cfg.global_batch, cfg.global_batch)
        if rank == 0:
            schedule.step(tokens[:, :-1])
        elif rank == world - 1:
            schedule.step(target=tokens[:, 1:])
        else:
            schedule.step()
        if cfg.grad_clip:
            # the global norm over every stage, as elastiq and a single process clip
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            local = torch.stack([g.pow(2).sum() for g in grads]).sum()
            dist.all_reduce(local)
            scale = min(1.0, cfg.grad_clip / (float(local.sqrt()) + 1e-6))
            for g in grads:
                g.mul_(scale)
        opt.step()
        progress.write(json.dumps({"step": step, "wall": time.time(), "rank": rank}) + "\n")
        progress.flush()
    progress.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
