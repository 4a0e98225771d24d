"""The lazy asynchronous multi-level checkpoint engine (one per saving rank).

Sits between the training loop (which calls `save` and `wait_for_copies`) and
storage (elastiq.fs). Tensors do not change between one optimizer step and the
next, so a save only records what to copy and returns; a copy thread moves the
pieces into a preallocated host buffer pool behind the next forward/backward, and
the loop waits, before its next optimizer step, only for copies not yet done. The
copy thread then checksums the host copy (CRC-32C per block) while a persist thread
writes the rank's tensor file (safetensors layout) to the node-local tier, fsync'ed,
uploads it to the durable root at any fsspec URL, then writes the rank's part
manifest. The pool is the back-pressure: a save waits for a free slot while older
checkpoints still occupy all of them.

Commit protocol: rank 0's commit thread waits for every part of a checkpoint,
merges them into manifest.json and writes the COMMITTED marker last. Readers
list only directories with a marker, so a checkpoint is either committed whole or
invisible; on object stores, where nothing renames atomically, the marker is the
publish step. Parts that never complete (a rank died mid-save) leave a directory
without a marker, which retention collects once a newer checkpoint commits.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from elastiq import fs
from elastiq.checkpoint import catalog, checksums
from elastiq.checkpoint.manifest import (
    COMMITTED,
    DEFAULT_BLOCK_BYTES,
    MANIFEST,
    Fragment,
    Manifest,
    TensorMeta,
    step_dir,
)
from elastiq.checkpoint.tensorfile import as_bytes, dtype_name, layout

log = logging.getLogger(__name__)

_ALIGN = 64


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """Where and how checkpoints are kept."""

    url: str
    """Durable root (any fsspec URL); each checkpoint is `<url>/step-NNNNNNNNN/`."""
    local_dir: str = ""
    """Node-local tier written (and fsync'ed) first, then uploaded to `url`; empty:
    write straight to `url`."""
    keep: int = 3
    """Committed checkpoints to retain; older ones and abandoned partial ones go."""
    pool_slots: int = 1
    """Checkpoints whose host copies may be in flight at once (host memory = slots x
    this rank's checkpoint bytes); a save waits for a free slot (back-pressure)."""
    block_bytes: int = DEFAULT_BLOCK_BYTES
    """Bytes per checksum block (the granularity of verified range reads)."""
    commit_timeout_s: float = 300.0
    """How long rank 0 waits for every part before abandoning a checkpoint."""

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("checkpoint url is empty: give a directory or fsspec URL")
        if self.keep < 1:
            raise ValueError(f"keep={self.keep}: at least the newest checkpoint must be kept")
        if self.pool_slots < 1:
            raise ValueError(f"pool_slots={self.pool_slots} must be at least 1")
        if self.block_bytes < 4096 or self.block_bytes % _ALIGN:
            raise ValueError(f"block_bytes={self.block_bytes}: use a multiple of 64, >= 4096")
        if self.commit_timeout_s <= 0:
            raise ValueError("commit_timeout_s must be positive")


@dataclass(frozen=True, slots=True)
class Piece:
    """Elements [lo, hi) of the flattened tensor `name` (full shape `shape`); `data`
    is a live 1-D view of them that must not change until `wait_for_copies`."""

    name: str
    shape: tuple[int, ...]
    lo: int
    hi: int
    data: torch.Tensor

    def __post_init__(self) -> None:
        if self.data.dim() != 1 or self.data.numel() != self.hi - self.lo:
            raise ValueError(
                f"piece {self.name}[{self.lo}:{self.hi}] has {self.data.numel()} elems"
            )


def _slot_layout(pieces: list[Piece]) -> tuple[list[int], int]:
    """Aligned byte offsets of `pieces` in a pool slot, and the slot size they need."""
    offsets, at = [], 0
    for p in pieces:
        offsets.append(at)
        at += -(-p.data.numel() * p.data.element_size() // _ALIGN) * _ALIGN
    return offsets, max(at, _ALIGN)


@dataclass(slots=True)
class _Save:
    step: int
    rank: int
    parts: int
    pieces: list[Piece]
    extra: dict[str, Any]
    slot: torch.Tensor
    offsets: list[int]
    sums: list[list[int]] = field(default_factory=list)
    copied: threading.Event = field(default_factory=threading.Event)
    checksummed: threading.Event = field(default_factory=threading.Event)
    persisted: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass(slots=True)
class SaveStats:
    """What the loop and the background did for the last saves (seconds, bytes)."""

    saves: int = 0
    committed_step: int = -1
    bytes_persisted: int = 0
    save_call_s: float = 0.0
    wait_s: float = 0.0
    copy_s: float = 0.0
    checksum_s: float = 0.0
    persist_s: float = 0.0
    last_persist_s: float = 0.0
    last_commit_s: float = 0.0
    skipped: int = 0
    """Saves not made because every pool slot was still held by older checkpoints
    (the caller asked `has_free_slot` and chose to skip: see `skip`)."""
    errors: list[str] = field(default_factory=list)


class CheckpointEngine:
    """One rank's saver. `save(...)` returns at once; `wait_for_copies()` before the
    optimizer step; `flush()` to wait for everything (end of training)."""

    def __init__(self, config: CheckpointConfig) -> None:
        self.config = config
        self.stats = SaveStats()
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        self._slots = 0
        self._slot_bytes = 0
        self._copy_q: queue.Queue[_Save | None] = queue.Queue()
        self._persist_q: queue.Queue[_Save | None] = queue.Queue()
        self._commit_q: queue.Queue[tuple[int, int] | threading.Event | None] = queue.Queue()
        self._uncopied: list[_Save] = []
        self._inflight: list[_Save] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._copier, name="ckpt-copy", daemon=True),
            threading.Thread(target=self._persister, name="ckpt-persist", daemon=True),
            threading.Thread(target=self._committer, name="ckpt-commit", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # the training loop's side -------------------------------------------------------
    def save(
        self, step: int, pieces: list[Piece], *, rank: int, parts: int, extra: dict[str, Any]
    ) -> None:
        """Checkpoint `pieces` of `step` as part `rank` of `parts`; rank 0 commits.
        Blocks only while every pool slot is taken by older checkpoints."""
        t0 = time.perf_counter()
        if not 0 <= rank < parts:
            raise ValueError(f"rank {rank} is not one of {parts} parts")
        offsets, size = _slot_layout(pieces)
        slot = self._take_slot(size)
        job = _Save(step, rank, parts, pieces, dict(extra), slot, offsets)
        with self._lock:
            self._uncopied.append(job)
            self._inflight.append(job)
        self._copy_q.put(job)
        self.stats.saves += 1
        self.stats.save_call_s += time.perf_counter() - t0

    def has_free_slot(self) -> bool:
        """Whether a save now would start at once, not wait for an older checkpoint
        to finish writing. A rank that checkpoints more often than it can write asks
        this first and skips (the training loop never queues behind its own saves,
        and host memory stays at `pool_slots` x its share)."""
        return self._slots == 0 or not self._free.empty()

    def skip(self, step: int) -> None:
        """Record that the save of `step` was skipped (the previous one still writing)."""
        self.stats.skipped += 1
        log.info("checkpoint of step %d skipped: the previous one is still being written", step)

    def wait_for_copies(self) -> float:
        """Block until no host copy is pending (call before the optimizer step);
        returns the seconds waited."""
        with self._lock:
            pending = list(self._uncopied)
        if not pending:
            return 0.0
        t0 = time.perf_counter()
        for job in pending:
            job.copied.wait()
        waited = time.perf_counter() - t0
        self.stats.wait_s += waited
        return waited

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every save so far is persisted and (on rank 0) committed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            pending = list(self._inflight)
        for job in pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.persisted.wait(left):
                raise TimeoutError(f"checkpoint of step {job.step} not persisted in time")
            if job.error is not None:
                raise RuntimeError(f"checkpoint of step {job.step} failed: {job.error}")
        done = threading.Event()  # set by the committer after the commits queued so far
        self._commit_q.put(done)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not done.wait(left):
            raise TimeoutError("checkpoint commit did not finish in time")

    def close(self) -> None:
        """Stop the threads after the work already queued (does not wait for commits)."""
        self._copy_q.put(None)
        self._commit_q.put(None)

    # pool ----------------------------------------------------------------------------
    def reserve(self, pieces: list[Piece]) -> None:
        """Preallocate (and fault in) the pool for saves of `pieces`, so the first
        save copies at memory speed instead of paying for fresh pages."""
        self._grow(_slot_layout(pieces)[1])

    def _grow(self, nbytes: int) -> None:
        if nbytes <= self._slot_bytes:
            return
        # a bigger share of state (a new layout): the pool is rebuilt at that size
        # once the old slots come back, so memory stays bounded by slots x bytes
        for _ in range(self._slots):
            self._free.get()
        self._slot_bytes, self._slots = nbytes, self.config.pool_slots
        for _ in range(self._slots):
            self._free.put(torch.zeros(nbytes, dtype=torch.uint8))

    def _take_slot(self, nbytes: int) -> torch.Tensor:
        self._grow(nbytes)
        return self._free.get()

    # background ----------------------------------------------------------------------
    def _copier(self) -> None:
        while (job := self._copy_q.get()) is not None:
            t0 = time.perf_counter()
            try:
                for piece, off in zip(job.pieces, job.offsets, strict=True):
                    n = piece.data.numel() * piece.data.element_size()
                    job.slot[off : off + n].copy_(piece.data.detach().view(torch.uint8))
            except BaseException as exc:  # reported by flush()
                job.error = exc
            self.stats.copy_s += time.perf_counter() - t0
            job.copied.set()
            with self._lock:
                self._uncopied.remove(job)
            self._persist_q.put(job)
            # checksums of the (now immutable) host copy, while the persist thread
            # already writes it: neither the loop nor the write waits for them
            self._checksum(job)
        self._persist_q.put(None)

    def _checksum(self, job: _Save) -> None:
        block = self.config.block_bytes
        t0 = time.perf_counter()
        try:
            for p, off in zip(job.pieces, job.offsets, strict=True):
                n = p.data.numel() * p.data.element_size()
                view = as_bytes(job.slot[off : off + n])
                job.sums.append(checksums.block_checksums(checksums.DEFAULT, view, block))
        except BaseException as exc:
            job.error = job.error or exc
        finally:
            self.stats.checksum_s += time.perf_counter() - t0
            job.checksummed.set()

    def _persister(self) -> None:
        while (job := self._persist_q.get()) is not None:
            t0 = time.perf_counter()
            try:
                if job.error is None:
                    self._persist(job)
            except BaseException as exc:  # the checkpoint stays uncommitted
                job.error = exc
                self.stats.errors.append(f"step {job.step}: {exc}")
                log.error("checkpoint of step %d failed to persist: %s", job.step, exc)
            finally:
                self._free.put(job.slot)
                elapsed = time.perf_counter() - t0
                self.stats.persist_s += elapsed
                self.stats.last_persist_s = elapsed
                job.persisted.set()
                with self._lock:
                    self._inflight.remove(job)
            if job.error is None and job.rank == 0:
                self._commit_q.put((job.step, job.parts))

    def _persist(self, job: _Save) -> None:
        cfg = self.config
        name = f"rank-{job.rank:05d}.safetensors"
        entries = [
            (f"{p.name}@{p.lo}", dtype_name(p.data.dtype), (p.hi - p.lo,)) for p in job.pieces
        ]
        prefix, placed = layout(entries, {"format": "elastiq-universal", "step": str(job.step)})

        def chunks() -> Iterator[bytes | memoryview]:
            yield prefix
            for p, off in zip(job.pieces, job.offsets, strict=True):
                n = p.data.numel() * p.data.element_size()
                yield as_bytes(job.slot[off : off + n])

        remote = fs.join(cfg.url, step_dir(job.step), name)
        if cfg.local_dir:
            local = fs.join(cfg.local_dir, step_dir(job.step), name)
            written = fs.write_chunks(local, chunks())
            fs.copy_file(local, remote)
        else:
            written = fs.write_chunks(remote, chunks())
        self.stats.bytes_persisted += written
        job.checksummed.wait()
        if job.error is not None:
            raise job.error
        fragments = [
            Fragment(p.name, name, p.lo, p.hi, e.start, tuple(c))
            for p, e, c in zip(job.pieces, placed, job.sums, strict=True)
        ]
        tensors = {
            p.name: TensorMeta(p.name, dtype_name(p.data.dtype), p.shape) for p in job.pieces
        }
        part = Manifest(job.step, tensors, fragments, job.extra, job.parts, cfg.block_bytes)
        data = part.to_json().encode()
        fs.write_bytes(fs.join(cfg.url, step_dir(job.step), catalog.part_name(job.rank)), data)
        if cfg.local_dir:
            catalog.prune_local(cfg.local_dir, cfg.keep)

    def _committer(self) -> None:
        while (item := self._commit_q.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            step, parts = item
            t0 = time.perf_counter()
            try:
                self._commit(step, parts)
                self.stats.committed_step = step
                self.stats.last_commit_s = time.perf_counter() - t0
                catalog.collect(self.config.url, self.config.keep, self.config.local_dir)
            except Exception as exc:  # the checkpoint stays invisible
                self.stats.errors.append(f"commit of step {step}: {exc}")
                log.error("checkpoint of step %d not committed: %s", step, exc)

    def _commit(self, step: int, parts: int) -> None:
        cfg = self.config
        where = fs.join(cfg.url, step_dir(step))
        deadline = time.monotonic() + cfg.commit_timeout_s
        names = [catalog.part_name(r) for r in range(parts)]
        pause = 0.005
        while not all(fs.exists(fs.join(where, n)) for n in names):
            if time.monotonic() > deadline:
                missing = [n for n in names if not fs.exists(fs.join(where, n))]
                raise TimeoutError(f"parts {missing} never arrived; abandoned")
            time.sleep(pause)
            pause = min(0.2, pause * 2)
        merged: Manifest | None = None
        for n in names:
            part = Manifest.from_json(
                fs.read_bytes(fs.join(where, n)), f"{where}/{n}", partial=True
            )
            if merged is None:
                merged = part
                continue
            for t in part.tensors.values():
                if merged.tensors.setdefault(t.name, t) != t:
                    raise ValueError(f"parts disagree on tensor {t.name!r}")
            merged.fragments.extend(part.fragments)
        if merged is None:
            raise ValueError("a checkpoint needs at least one part")
        merged.parts = parts
        merged.tiers = {
            "remote": "committed",
            **({"local": cfg.local_dir} if cfg.local_dir else {}),
        }
        merged.validate(where)  # every tensor covered exactly once, or no commit
        fs.write_bytes(fs.join(where, MANIFEST), merged.to_json().encode())
        marker = {"step": step, "parts": parts, "bytes": merged.total_bytes(), "time": time.time()}
        fs.write_bytes(fs.join(where, COMMITTED), json.dumps(marker).encode())
        log.info(
            "checkpoint of step %d committed (%d parts, %d bytes)", step, parts, marker["bytes"]
        )
