"""The torchrun baseline for bench/mttr.py: plain DDP as a user would write it.

Same model units, data order, global batch and micro-batch routing as elastiq;
torch.optim.AdamW; a checkpoint every `--ckpt-every` steps (rank 0, torch.save,
atomic rename) that a restarted run resumes from. Each rank appends one JSON line
per committed step to progress-<rank>.jsonl so the benchmark can time the kill
and the recovery from outside.

Run by `torchrun --standalone --nproc-per-node N --max-restarts R bench/torchrun_ddp.py ...`.
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
from torch.nn.parallel import DistributedDataParallel

from elastiq.agent.runtime.data.open_dataset import open_dataset
from elastiq.agent.runtime.models.source import ModelSource, model_source
from elastiq.config import JobConfig
from elastiq.lr import lr_at
from elastiq.partition import even_split


class Stack(nn.Module):
    """The job's model (built-in or an entry point) as one module, built as elastiq
    builds it, so both sides start from the same weights."""

    def __init__(self, source: ModelSource) -> None:
        super().__init__()
        self.units = nn.ModuleList(source.make_unit(u) for u in range(source.num_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="JobConfig JSON")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--ckpt-every", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = JobConfig.from_json(args.config)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    source = model_source(cfg)
    order = open_dataset(cfg, source.vocab)
    model = Stack(source)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ckpt = os.path.join(args.workdir, "ckpt.pt")
    start = 0
    if os.path.exists(ckpt):
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
    progress = open(os.path.join(args.workdir, f"progress-{rank}.jsonl"), "a")  # noqa: SIM115
    lo, hi = even_split(cfg.micro_batches, world, rank)
    for step in range(start + 1, cfg.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps)
        opt.zero_grad()
        base = (step - 1) * cfg.global_batch
        for i, mb in enumerate(range(lo, hi)):
            tokens = order.samples(base + mb * cfg.micro_batch, cfg.micro_batch)
            ctx = ddp.no_sync() if i < hi - lo - 1 else torch.enable_grad()
            with ctx:
                per = source.loss(ddp(tokens[:, :-1]), tokens[:, 1:])
                # DDP averages over the world; scale so the result is the sum / global batch
                (per.sum() * world / cfg.global_batch).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if cfg.step_delay_s:
            time.sleep(cfg.step_delay_s)
        progress.write(
            json.dumps(
                {
                    "step": step,
                    "wall": time.time(),
                    "pid": os.getpid(),
                    "rank": rank,
                    "restart": restart,
                    "resumed_from": start,
                }
            )
            + "\n"
        )
        progress.flush()
        if rank == 0 and step % args.ckpt_every == 0:
            tmp = ckpt + ".tmp"
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
            os.replace(tmp, ckpt)
    progress.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
