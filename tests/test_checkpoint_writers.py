"""Many writers, one checkpoint: 8 real processes, each a rank with its own engine,
checkpoint their shards at once into one root (issue 16). The commit appears once,
after every shard is written; a rank SIGKILLed while writing leaves the previous
checkpoint the newest committed one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import torch

from elastiq import fs
from elastiq.checkpoint import catalog
from elastiq.checkpoint.manifest import COMMITTED, MANIFEST, Manifest, step_dir
from elastiq.checkpoint.restore import Request, load_newest

RANKS = 8
SHARD = 250_000  # elements of the shared tensor each rank holds
VICTIM = 5

_RANK = textwrap.dedent(
    """
    import sys, torch
    from elastiq.checkpoint.engine import CheckpointConfig, CheckpointEngine, Piece
    url, rank, parts, victim, shard = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(1)
    engine = CheckpointEngine(CheckpointConfig(url=url, commit_timeout_s=4.0))
    for step in (2, 4):
        data = torch.full((shard,), float(100 * step + rank))
        pieces = [Piece(name="w", shape=(shard * parts,), lo=rank * shard,
                        hi=(rank + 1) * shard, data=data)]
        if step == 4 and rank == victim:  # 800 MB: still being written when it is killed
            big = torch.ones(200_000_000)
            pieces.append(Piece(name="big", shape=(big.numel(),), lo=0, hi=big.numel(),
                                data=big))
        engine.save(step, pieces, rank=rank, parts=parts, extra={"step": step})
        engine.flush(120)
        print("flushed", step, flush=True)
    """
)


def _wait_line(proc: subprocess.Popen[bytes], want: bytes, timeout_s: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == want:
            return
        if not line and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"rank exited with {proc.returncode} before {want!r}: {err}")
    raise TimeoutError(f"no {want!r} within {timeout_s}s")


def test_eight_ranks_commit_once_and_a_rank_killed_mid_write_leaves_the_previous(
    tmp_path: object,
) -> None:
    url = f"{tmp_path}/ckpt"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, url, str(r), str(RANKS), str(VICTIM), str(SHARD)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for r in range(RANKS)
    ]
    try:
        for p in procs:
            _wait_line(p, b"flushed 2", 120)
        # one commit, written after every shard and every part manifest
        where = os.path.join(url, step_dir(2))
        assert catalog.committed(url) == [2]
        marker = os.path.join(where, COMMITTED)
        shards = [f for f in os.listdir(where) if f != COMMITTED]
        assert len([f for f in shards if f.endswith(".safetensors")]) == RANKS
        committed_at = os.path.getmtime(marker)
        assert all(os.path.getmtime(os.path.join(where, f)) <= committed_at for f in shards)
        manifest = Manifest.from_json(fs.read_bytes(os.path.join(where, MANIFEST)))
        assert manifest.parts == RANKS and len(manifest.fragments) == RANKS

        # step 4: the victim is killed while its shard is being written
        victim_file = os.path.join(url, step_dir(4), f"rank-{VICTIM:05d}.safetensors")
        deadline = time.monotonic() + 120
        while not os.path.exists(victim_file) and time.monotonic() < deadline:
            time.sleep(0.001)
        procs[VICTIM].send_signal(signal.SIGKILL)
        assert procs[VICTIM].wait(30) == -signal.SIGKILL
        for r, p in enumerate(procs):
            if r != VICTIM:
                _wait_line(p, b"flushed 4", 120)  # rank 0: after its commit gave up
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert os.path.getsize(victim_file) < 800_000_000, "the kill came after the write finished"
    assert catalog.committed(url) == [2]
    assert not os.path.exists(os.path.join(url, step_dir(4), COMMITTED))
    out = torch.empty(SHARD * RANKS)
    _, report = load_newest(url, [Request("w", 0, SHARD * RANKS, out)])
    assert report.step == 2
    want = torch.cat([torch.full((SHARD,), 200.0 + r) for r in range(RANKS)])
    assert torch.equal(out, want)
