"""The checkpoint library against real files (file:// via tmp_path, and memory://):
universal round trips across layouts, the commit protocol, and every fault the
issue names. Ranks are threads, each with its own real engine."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import torch
import torch.distributed as dist

from elastiq import fs
from elastiq.agent.runtime.checkpointing import (
    WorkerCheckpoints,
    extra_state,
    pieces,
    requests,
    restore,
    save_share,
)
from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.trainer import TrainState
from elastiq.checkpoint import catalog
from elastiq.checkpoint.engine import CheckpointConfig, CheckpointEngine, Piece
from elastiq.checkpoint.manifest import (
    COMMITTED,
    MANIFEST,
    Fragment,
    Manifest,
    ManifestError,
    TensorMeta,
    plan_reads,
    step_dir,
)
from elastiq.checkpoint.restore import (
    CheckpointReader,
    CorruptCheckpoint,
    NoCheckpoint,
    Request,
    load_newest,
)
from elastiq.config import JobConfig, ModelConfig
from elastiq.partition import even_split
from tests.threaded import run_ranks

CFG = JobConfig(steps=20, model=ModelConfig(dim=16, n_layers=4, n_heads=2))
UNITS = CFG.model.n_layers + 2
BLOCK = 4096


def _layout(stages: int, degree: int, zero: bool) -> list[TrainState]:
    """One TrainState per rank: `stages` even unit ranges, `degree` replicas each."""
    states = []
    for s in range(stages):
        units = even_split(UNITS, stages, s)
        for j in range(degree):
            st = TrainState(CFG, units)
            lo, hi = even_split(st.flat.numel, degree, j) if zero else (0, st.flat.numel)
            st.set_moment_range(st.base + lo, st.base + hi)
            states.append(st)
    return states


def _global(states: list[TrainState]) -> dict[str, torch.Tensor]:
    """Everything the layout holds, in global flat coordinates (params and moments)."""
    total = sum(CFG.unit_numel())
    out = {k: torch.full((total,), float("nan")) for k in ("p", "m", "v")}
    for st in states:
        out["p"][st.base : st.base + st.flat.numel] = st.flat.data
        m_lo, m_hi = st.moment_range
        out["m"][m_lo:m_hi] = st.opt.exp_avg
        out["v"][m_lo:m_hi] = st.opt.exp_avg_sq
    return out


def _trained(stages: int, degree: int, zero: bool, step: int) -> list[TrainState]:
    """A layout whose state is distinct everywhere (stands in for `step` steps)."""
    gen = torch.Generator().manual_seed(step)
    total = sum(CFG.unit_numel())
    values = {k: torch.randn(total, generator=gen) for k in ("p", "m")}
    values["v"] = torch.rand(total, generator=gen) + 0.1
    states = _layout(stages, degree, zero)
    for st in states:
        st.flat.data.copy_(values["p"][st.base : st.base + st.flat.numel])
        m_lo, m_hi = st.moment_range
        st.opt.exp_avg.copy_(values["m"][m_lo:m_hi])
        st.opt.exp_avg_sq.copy_(values["v"][m_lo:m_hi])
        st.step = st.opt.step_count = step
    return states


def _save(url: str, states: list[TrainState], degree: int, **cfg: object) -> None:
    """Every rank saves its share through its own engine, concurrently."""
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            st = states[r]
            engine = CheckpointEngine(CheckpointConfig(url=url, block_bytes=BLOCK, **cfg))  # type: ignore[arg-type]
            lo, hi = save_share(st, degree, r % degree)
            extra = extra_state(CFG, st.step) if r == 0 else {}
            engine.save(st.step, pieces(st, lo, hi), rank=r, parts=len(states), extra=extra)
            engine.wait_for_copies()
            engine.flush(30)
            engine.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(states))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


def _load(url: str, states: list[TrainState]) -> None:
    for st in states:
        restore(st, url)


@pytest.fixture(params=["file", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: object) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/ckpt"
    return f"memory://ckpt-{uuid.uuid4().hex}"


@pytest.mark.parametrize(("stages", "degree", "zero"), [(1, 3, False), (4, 1, False), (1, 1, True)])
def test_a_pp2_dp2_zero1_checkpoint_restores_bitwise_under_another_layout(
    root: str, stages: int, degree: int, zero: bool
) -> None:
    saved = _trained(2, 2, True, step=7)
    _save(root, saved, degree=2)
    assert catalog.committed(root) == [7]
    target = _layout(stages, degree, zero)
    _load(root, target)
    want, got = _global(saved), _global(target)
    assert torch.equal(want["p"], got["p"])
    covered = ~torch.isnan(got["m"])
    assert torch.equal(want["m"][covered], got["m"][covered])
    assert torch.equal(want["v"][covered], got["v"][covered])
    assert all(st.step == 7 and st.opt.step_count == 7 for st in target)


def test_a_reader_reads_only_the_byte_ranges_it_needs(tmp_path: object) -> None:
    url = f"{tmp_path}/ckpt"
    _save(url, _trained(1, 4, True, step=3), degree=4)
    total_bytes = sum(
        os.path.getsize(os.path.join(url, step_dir(3), f))
        for f in os.listdir(os.path.join(url, step_dir(3)))
        if f.endswith(".safetensors")
    )
    one = _layout(4, 1, False)[0]  # the first of four stages: about a quarter of it all
    reader = CheckpointReader(url, 3)
    reader.read(requests(one))
    assert reader.bytes_read < total_bytes / 2


def test_the_newest_committed_checkpoint_wins_and_retention_keeps_n(root: str) -> None:
    for step in (2, 4, 6, 8):
        _save(root, _trained(1, 2, True, step=step), degree=2, keep=2)
    assert catalog.committed(root) == [6, 8]
    target = _layout(1, 1, False)
    _load(root, target)
    assert target[0].step == 8


def test_a_part_that_never_arrives_leaves_the_checkpoint_invisible(root: str) -> None:
    _save(root, _trained(1, 2, True, step=2), degree=2)
    states = _trained(1, 2, True, step=4)
    engine = CheckpointEngine(CheckpointConfig(url=root, block_bytes=BLOCK, commit_timeout_s=0.5))
    lo, hi = save_share(states[0], 2, 0)
    engine.save(4, pieces(states[0], lo, hi), rank=0, parts=2, extra=extra_state(CFG, 4))
    engine.flush(10)  # rank 1 "died": its part never comes
    assert catalog.committed(root) == [2]
    assert "never arrived" in engine.stats.errors[-1]
    target = _layout(1, 1, False)
    _load(root, target)
    assert target[0].step == 2
    # a later commit collects the abandoned directory
    _save(root, _trained(1, 2, True, step=6), degree=2)
    assert catalog.steps(root) == [2, 6]


def test_a_flipped_byte_is_named_and_restore_falls_back_to_the_previous(tmp_path: object) -> None:
    url = f"{tmp_path}/ckpt"
    _save(url, _trained(1, 2, True, step=2), degree=2)
    _save(url, _trained(1, 2, True, step=4), degree=2)
    manifest = Manifest.from_json(fs.read_bytes(f"{url}/{step_dir(4)}/{MANIFEST}"))
    victim = next(f for f in manifest.fragments if f.tensor.startswith("optim/exp_avg_sq/"))
    path = os.path.join(url, step_dir(4), victim.file)
    with open(path, "r+b") as f:
        f.seek(victim.offset + 5)
        byte = f.read(1)
        f.seek(victim.offset + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    from elastiq.cli import main

    assert main(["ckpt", "verify", f"{url}/{step_dir(4)}"]) == 1
    target = _layout(1, 1, False)
    report = restore(target[0], url)
    assert report.step == 2 and target[0].step == 2
    assert victim.tensor in report.skipped[0] and "checksum" in report.skipped[0]
    with pytest.raises(CorruptCheckpoint) as err:
        CheckpointReader(url, 4).read(requests(_layout(1, 1, False)[0]))
    assert err.value.tensor == victim.tensor


def test_a_truncated_file_is_a_clear_error_and_nothing_is_loaded(tmp_path: object) -> None:
    url = f"{tmp_path}/ckpt"
    _save(url, _trained(1, 1, True, step=2), degree=1)
    path = os.path.join(url, step_dir(2), "rank-00000.safetensors")
    os.truncate(path, os.path.getsize(path) // 2)
    target = _layout(1, 1, False)[0]
    before = target.flat.data.clone()
    with pytest.raises(NoCheckpoint, match="truncated"):
        load_newest(url, requests(target))
    assert target.step == 0 and before.shape == target.flat.data.shape


def _tamper(url: str, step: int, change: object) -> None:
    path = f"{url}/{step_dir(step)}/{MANIFEST}"
    raw = json.loads(fs.read_bytes(path))
    change(raw)  # type: ignore[operator]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(raw, f)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["fragments"][0].update(file="../../etc/passwd"), "outside the checkpoint"),
        (lambda m: m["fragments"][0].update(file="s3://elsewhere/x"), "outside the checkpoint"),
        (lambda m: next(iter(m["tensors"].values())).update(dtype="F99"), "unknown dtype"),
        (lambda m: m["fragments"][0].update(hi=m["fragments"][0]["hi"] + 10**9), "outside its"),
        (lambda m: m["fragments"].pop(), "covered up to"),
        # JSON reads 8e8609 as infinity: int() of it raised OverflowError (fuzz)
        (lambda m: m.update(block_bytes=float("inf")), "expected an integer"),
        (lambda m: m["fragments"][0].update(lo=0.5), "expected an integer"),
    ],
)
def test_an_unsafe_or_malformed_manifest_loads_nothing(
    tmp_path: object, change: object, message: str
) -> None:
    url = f"{tmp_path}/ckpt"
    _save(url, _trained(1, 1, True, step=2), degree=1)
    _tamper(url, 2, change)
    with pytest.raises(ManifestError, match=message):
        CheckpointReader(url, 2)


def test_a_shape_or_dtype_that_does_not_match_is_refused_before_reading(tmp_path: object) -> None:
    url = f"{tmp_path}/ckpt"
    _save(url, _trained(1, 1, True, step=2), degree=1)
    reader = CheckpointReader(url, 2)
    name = next(iter(reader.manifest.tensors))
    with pytest.raises(ManifestError, match="asked for 3 elements"):
        reader.read([Request(name, 0, 3, torch.empty(3, dtype=torch.float64))])
    assert reader.bytes_read == 0


def test_plan_reads_widens_to_whole_crc_blocks() -> None:
    meta = TensorMeta("t", "F32", (10_000,))
    frag = Fragment("t", "f.safetensors", 0, 10_000, 128, (1,) * 10)
    manifest = Manifest(1, {"t": meta}, [frag], block_bytes=4096)
    (read,) = plan_reads(manifest, "t", 1500, 1600)  # bytes 6000..6400: block 1
    assert (read.start, read.end) == (128 + 4096, 128 + 8192)
    (tail,) = plan_reads(manifest, "t", 9990, 10_000)  # the short last block
    assert tail.end == 128 + 40_000


def test_a_save_returns_before_the_bytes_are_written(tmp_path: object) -> None:
    """The loop is held for the save call only; copies and persistence run behind it."""
    url = f"{tmp_path}/ckpt"
    big = torch.randn(8 << 20)  # 32 MiB
    want = big.clone()
    engine = CheckpointEngine(CheckpointConfig(url=url))
    engine.save(
        1,
        [Piece(name="w", shape=(big.numel(),), lo=0, hi=big.numel(), data=big)],
        rank=0,
        parts=1,
        extra={},
    )
    assert not fs.exists(f"{url}/{step_dir(1)}/{COMMITTED}")
    engine.wait_for_copies()
    big.add_(1.0)  # the next optimizer step: the checkpoint must not see it
    engine.flush(30)
    engine.close()
    out = torch.empty_like(big)
    CheckpointReader(url, 1).read([Request("w", 0, big.numel(), out)])
    assert torch.equal(out, want)
    assert engine.stats.save_call_s < 0.05


_SAVER = textwrap.dedent(
    """
    import sys, torch
    from elastiq.checkpoint.engine import CheckpointConfig, CheckpointEngine, Piece
    engine = CheckpointEngine(CheckpointConfig(url=sys.argv[1]))
    for step, n in ((2, 100_000), (4, 200_000_000)):  # the second: 800 MB, slow to write
        t = torch.full((n,), float(step))
        engine.save(step, [Piece(name="w", shape=(n,), lo=0, hi=n, data=t)],
                    rank=0, parts=1, extra={"step": step})
        engine.flush(120)
        print("committed", step, flush=True)
    """
)


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint_loadable(
    tmp_path: object,
) -> None:
    """SIGKILL from outside once the second checkpoint's tensor file is being written."""
    url = f"{tmp_path}/ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == [b"committed", b"2"]
        target = os.path.join(url, step_dir(4), "rank-00000.safetensors")
        deadline = time.monotonic() + 60
        while not os.path.exists(target) and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert catalog.steps(url) == [2, 4] and catalog.committed(url) == [2]
    assert os.path.getsize(target) < 800_000_000, "the kill came after the write finished"
    out = torch.empty(100_000)
    _, report = load_newest(url, [Request("w", 0, 100_000, out)])
    assert report.step == 2 and bool((out == 2.0).all())


def test_a_local_tier_is_written_first_then_uploaded_and_read_first(tmp_path: object) -> None:
    """Node-local disk, then a remote root (memory://); a reader prefers the local copy
    and falls back to the root for files this node does not have."""
    local = f"{tmp_path}/local"
    remote = f"memory://ckpt-{uuid.uuid4().hex}"
    saved = _trained(1, 2, True, step=5)
    _save(remote, saved, degree=2, local_dir=local)
    assert sorted(os.listdir(os.path.join(local, step_dir(5)))) == [
        "rank-00000.safetensors",
        "rank-00001.safetensors",
    ]
    manifest = CheckpointReader(remote, 5).manifest
    assert manifest.tiers == {"remote": "committed", "local": local}
    os.remove(os.path.join(local, step_dir(5), "rank-00001.safetensors"))  # another node's
    target = _layout(1, 1, False)
    report = restore(target[0], remote, local_dir=local)
    assert report.step == 5
    assert torch.equal(_global(saved)["p"], _global(target)["p"])


def test_a_full_pool_is_seen_before_a_save_would_wait(tmp_path: object) -> None:
    """has_free_slot is false exactly while the pool's only slot is being written."""
    engine = CheckpointEngine(CheckpointConfig(url=f"{tmp_path}/ckpt"))
    big = torch.ones(100_000_000)  # 400 MB: still being written when asked
    piece = Piece(name="w", shape=(big.numel(),), lo=0, hi=big.numel(), data=big)
    assert engine.has_free_slot()
    engine.save(1, [piece], rank=0, parts=1, extra={})
    assert not engine.has_free_slot()
    engine.flush(60)
    assert engine.has_free_slot()
    engine.close()


def test_while_one_rank_still_writes_every_rank_skips_the_checkpoint(tmp_path: object) -> None:
    """Two ranks on real gloo groups (threads); rank 1's previous checkpoint is still
    being written (its pool says so), so both skip step 4 together: a part missing
    from one rank would hold rank 0's commit. The last step's save is never skipped."""
    url = f"{tmp_path}/ckpt"
    cfg = JobConfig(
        steps=6, checkpoint_url=url, checkpoint_every=2, model=CFG.model, job="skip-test"
    )
    store = dist.HashStore()
    states = _trained(1, 2, True, step=4)
    outcome: dict[int, list[bool]] = {}
    skipped: dict[int, int] = {}

    def rank_main(rank: int) -> None:
        pg = dist.ProcessGroupGloo(store, rank, 2, datetime.timedelta(seconds=30))
        group = Group(pg, rank, 2, 1, 30.0, lambda: False)
        saver = WorkerCheckpoints(cfg)
        assert saver.engine is not None
        if rank == 1:
            saver.engine.has_free_slot = lambda: False  # type: ignore[method-assign]
        state = states[rank]
        outcome[rank] = [saver.maybe_save(state, group, degree=2, replica=rank)]
        state.step = state.opt.step_count = 6  # the last step
        outcome[rank].append(saver.maybe_save(state, group, degree=2, replica=rank))
        saver.finish(30)
        skipped[rank] = saver.progress()[2]

    run_ranks(2, rank_main)
    assert outcome == {0: [False, True], 1: [False, True]}
    assert skipped == {0: 1, 1: 1}
    assert catalog.committed(url) == [6]
