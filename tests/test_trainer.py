"""The training step does not depend on the layout: real gloo groups, one thread per rank."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from elastiq.agent.runtime.comm import CollectiveFailed, Group
from elastiq.agent.runtime.data.byte_corpus import ByteCorpus
from elastiq.agent.runtime.data.sample_order import SampleOrder
from elastiq.agent.runtime.trainer import TrainState, run_step
from elastiq.config import JobConfig, ModelConfig
from tests.threaded import run_ranks

CFG = JobConfig(
    steps=3,
    global_batch=12,
    micro_batch=2,
    seq_len=16,
    warmup_steps=1,
    model=ModelConfig(dim=16, n_layers=2, n_heads=2),
)


def train(
    world: int, steps: int = 3, orders: list[tuple[int, ...]] | None = None
) -> list[torch.Tensor]:
    torch.manual_seed(0)
    corpus = torch.randint(0, 256, (20_000,), dtype=torch.uint8)
    store = dist.HashStore()
    results: list[torch.Tensor | None] = [None] * world

    def rank_main(rank: int) -> None:
        pg = dist.ProcessGroupGloo(
            dist.PrefixStore(f"w{world}/", store), rank, world, datetime.timedelta(seconds=30)
        )
        group = Group(pg, rank, world, 1, 30.0, lambda: False)
        state = TrainState(CFG)
        order = SampleOrder(ByteCorpus(corpus), CFG.seq_len, CFG.seed)
        for step in range(1, steps + 1):
            run_step(state, group, order, step, want_switch=False, orders=orders)
        results[rank] = state.flat.data.clone()

    run_ranks(world, rank_main)
    return [r for r in results if r is not None]


def test_parameters_agree_across_world_sizes_within_fp32_tolerance() -> None:
    one = train(1)[0]
    for world in (2, 3):
        params = train(world)
        assert all(torch.equal(params[0], p) for p in params), "ranks diverged"
        assert (params[0] - one).abs().max().item() <= 1e-5


def test_the_same_layout_is_bitwise_reproducible() -> None:
    assert torch.equal(train(2)[0], train(2)[0])


def test_rollback_restores_the_previous_step_exactly() -> None:
    state = TrainState(CFG)
    before = state.flat.data.clone()
    state.snapshot()
    state.flat.data.add_(1.0)
    state.opt.exp_avg.add_(1.0)
    state.opt.step_count += 1
    state.step = 1
    state.rollback_to(0)
    assert torch.equal(state.flat.data, before) and state.step == 0
    assert state.opt.exp_avg.abs().sum() == 0 and state.opt.step_count == 0


class _GatherDies(Group):
    """A real gloo group whose parameter all-gather fails, as when a peer is killed
    between the optimizer update and the gather (the fault is injected at that point)."""

    def allgather_into(self, outputs: list[torch.Tensor], tensor: torch.Tensor) -> None:
        raise CollectiveFailed("allgather: connection closed by peer (injected)")


def test_an_update_interrupted_before_its_allgather_is_undone() -> None:
    """ZeRO-1: each rank stepped its own interval, the gather failed; the state must
    be the previous step's, whole, so the next generation does not train on half of
    a step (this was seen as a 0.013 parameter divergence end to end)."""
    torch.manual_seed(0)
    corpus = torch.randint(0, 256, (20_000,), dtype=torch.uint8)
    store = dist.HashStore()
    world = 2
    clean: list[torch.Tensor | None] = [None] * world
    retried: list[torch.Tensor | None] = [None] * world

    def rank_main(rank: int) -> None:
        def group(prefix: str, kind: type[Group]) -> Group:
            pg = dist.ProcessGroupGloo(
                dist.PrefixStore(prefix, store), rank, world, datetime.timedelta(seconds=30)
            )
            return kind(pg, rank, world, 1, 30.0, lambda: False)

        order = SampleOrder(ByteCorpus(corpus), CFG.seq_len, CFG.seed)
        state = TrainState(CFG)
        n = state.flat.numel
        spans = [(n * r // world, n * (r + 1) // world) for r in range(world)]
        state.set_moment_range(*spans[rank])
        ok = group("ok/", Group)
        run_step(state, ok, order, 1, False, spans, zero=1)
        before = (state.flat.data.clone(), state.opt.exp_avg.clone(), state.opt.exp_avg_sq.clone())
        try:
            run_step(state, group("dies/", _GatherDies), order, 2, False, spans, zero=1)
        except CollectiveFailed:
            pass
        assert state.step == 1 and state.opt.step_count == 1
        assert torch.equal(state.flat.data, before[0])
        assert torch.equal(state.opt.exp_avg, before[1])
        assert torch.equal(state.opt.exp_avg_sq, before[2])
        run_step(state, group("again/", Group), order, 2, False, spans, zero=1)
        retried[rank] = state.flat.data.clone()
        reference = TrainState(CFG)
        reference.set_moment_range(*spans[rank])
        ref = group("ref/", Group)
        for step in (1, 2):
            run_step(reference, ref, order, step, False, spans, zero=1)
        clean[rank] = reference.flat.data.clone()

    run_ranks(world, rank_main)
    for a, b in zip(clean, retried, strict=True):
        assert a is not None and b is not None and torch.equal(a, b)
