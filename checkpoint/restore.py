"""Read any piece of a committed universal checkpoint under any layout, verified.

Sits above the manifest (which plans the byte ranges) and elastiq.fs (which reads
them). A caller asks for elements [lo, hi) of named tensors; each file is opened
once and read in offset order, widened to whole checksum blocks, and every block
read is verified (a read returns only once all are; on a mismatch the caller's
tensors hold undefined bytes and CorruptCheckpoint is raised). Files are taken from the
node-local tier when it has them (fastest tier first), else from the root.

`load_newest` walks the committed checkpoints newest first and falls back to the
previous one when a checkpoint is corrupt, saying so; a checkpoint whose manifest
is unsafe or malformed is never read at all.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from elastiq import fs
from elastiq.checkpoint import catalog, tensorfile
from elastiq.checkpoint.checksums import Checksum, checksum_function
from elastiq.checkpoint.manifest import (
    COMMITTED,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    Read,
    crc_blocks,
    plan_reads,
    step_dir,
)
from elastiq.checkpoint.tensorfile import TORCH_DTYPES, as_bytes
from elastiq.lr import lr_at

log = logging.getLogger(__name__)

#: consecutive whole blocks read from the disk in one preadv, across tensors. Measured
#: cold on this VM (1.1 GB, page cache dropped): a read per 8 MiB block took about
#: 1.2x one sequential read of the file, spans of 16-64 MiB about 1.1x (one-stage
#: restore); larger spans only lengthen the wait for the last span's checksums
SPAN_BYTES = 32 << 20
#: threads reading and verifying the blocks of a file the page cache holds. Warm on
#: this VM (1.1 GB, 3-stage restore, against one sequential read of as many bytes):
#: one reader with a checker thread behind it took 1.16x (the checksum a second pass
#: over memory, competing with the copy); one thread reading each 8 MiB block and
#: checksumming it at once, in its core's cache, 1.45x (CRC-32C at 20 GB/s is 54 ms
#: a GB, added to 116 ms of copying); two such threads 0.92x. From a disk they were
#: slower: two streams on one disk ran 1.4x-3x one sequential read here
CACHED_READERS = 2
#: bytes probed at each end of a file's reads to tell whether the page cache holds it
PROBE_BYTES = 64 << 10


class CorruptCheckpoint(RuntimeError):
    """Bytes that do not match their checksum, or a file shorter than the manifest says."""

    def __init__(self, message: str, tensor: str = "") -> None:
        super().__init__(message)
        self.tensor = tensor


class NoCheckpoint(FileNotFoundError):
    """No committed checkpoint (or none that verifies) exists under the root."""


@dataclass(frozen=True, slots=True)
class Request:
    """Fill `out` (1-D, the tensor's dtype) with elements [lo, hi) of `tensor`."""

    tensor: str
    lo: int
    hi: int
    out: torch.Tensor


@dataclass(slots=True)
class LoadReport:
    step: int
    url: str
    bytes_read: int = 0
    skipped: list[str] = field(default_factory=list)
    """Newer checkpoints passed over, each with the reason."""


def read_manifest(url: str, step: int) -> Manifest:
    where = fs.join(url, step_dir(step))
    if not fs.exists(fs.join(where, COMMITTED)):
        raise NoCheckpoint(f"{where} is not a committed checkpoint (no {COMMITTED} marker)")
    try:
        text = fs.read_regular(fs.join(where, MANIFEST), MAX_MANIFEST_BYTES)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{where}/{MANIFEST}: {exc}") from exc
    return Manifest.from_json(text, f"{where}/{MANIFEST}")


@dataclass(frozen=True, slots=True)
class _Block:
    """Checksum block `b` of a read's fragment: bytes [lo, hi) of its file. `dst` is
    the request's destination for the read, whose bytes start at file byte `want`
    and run `n` bytes; `into` is the block's own slice of them when the block lies
    wholly inside (read there directly), else None (read through scratch)."""

    lo: int
    hi: int
    b: int
    read: Read
    req: Request
    dst: torch.Tensor
    want: int
    n: int
    into: memoryview | None


class CheckpointReader:
    """Verified range reads from one committed checkpoint."""

    def __init__(self, url: str, step: int, local_dir: str = "") -> None:
        self.url, self.step, self.local_dir = url, step, local_dir
        self.manifest = read_manifest(url, step)
        self.bytes_read = 0

    def _file_url(self, name: str) -> str:
        if self.local_dir:
            local = fs.join(self.local_dir, step_dir(self.step), name)
            if fs.exists(local):
                return local
        return fs.join(self.url, step_dir(self.step), name)

    def read(self, requests: list[Request]) -> None:
        """Fill every request; CorruptCheckpoint names the tensor whose bytes fail.

        A block that lies wholly inside a request is read straight into the request's
        tensor. A file the page cache holds is read by CACHED_READERS threads, each
        checksumming a block right after reading it; one that must come from the
        disk is read in one stream, consecutive blocks in one preadv however many
        tensors they go to, each verified by a checker thread while the next span is
        read (reads and checksums release the GIL). Either way a restore costs about
        one pass over the bytes, not a read, a checksum and a copy in turn (issue
        16). Blocks at the edges of a
        request are read into scratch, verified, and only their wanted bytes copied.
        On CorruptCheckpoint the requests' contents are undefined (`load_newest` then
        fills them whole from an older checkpoint)."""
        plans: list[tuple[Read, Request]] = []
        for req in requests:
            meta = self.manifest.tensors.get(req.tensor)
            if meta is None:
                raise ManifestError(f"the checkpoint of step {self.step} has no {req.tensor!r}")
            if req.out.dtype != TORCH_DTYPES[meta.dtype] or req.out.numel() != req.hi - req.lo:
                raise ManifestError(
                    f"{req.tensor!r}: asked for {req.hi - req.lo} elements of {req.out.dtype}, "
                    f"the checkpoint holds {meta.dtype} of shape {list(meta.shape)}"
                )
            plans.extend((r, req) for r in plan_reads(self.manifest, req.tensor, req.lo, req.hi))
        by_file: dict[str, list[tuple[Read, Request]]] = {}
        for read, req in plans:
            by_file.setdefault(read.file, []).append((read, req))
        verify = checksum_function(self.manifest.checksum)
        for name, reads in sorted(by_file.items()):
            url = self._file_url(name)
            with self._open(url, reads[0][1].tensor) as f:
                size = f.seek(0, 2)
                blocks = []
                for read, req in sorted(reads, key=lambda x: x[0].start):
                    if read.end > size:  # before reading what a hostile manifest asks
                        raise CorruptCheckpoint(
                            f"{url} is truncated: tensor {req.tensor!r} needs bytes up "
                            f"to {read.end}, the file has {size}",
                            req.tensor,
                        )
                    blocks.extend(self._blocks(read, req))
                    self.bytes_read += read.end - read.start
                if len(blocks) > 1 and self._cached(f, blocks):
                    self._read_cached(f, url, blocks, verify)
                else:
                    self._read_from_disk(f, url, blocks, verify)

    def _blocks(self, read: Read, req: Request) -> list[_Block]:
        """The checksum blocks `read` spans, each with where its bytes go."""
        frag, block = read.fragment, self.manifest.block_bytes
        size = req.out.element_size()
        want = frag.offset + (read.lo - frag.lo) * size  # the request's bytes start here
        n = (read.hi - read.lo) * size
        dst = req.out[read.dst_lo : read.dst_lo + read.hi - read.lo]
        direct = as_bytes(dst) if dst.is_contiguous() else None
        frag_end = frag.offset + frag.nbytes(size)
        out = []
        for b in crc_blocks(read, block):
            lo = frag.offset + b * block
            hi = min(lo + block, frag_end)
            inside = direct is not None and want <= lo and hi <= want + n
            into = direct[lo - want : hi - want] if direct is not None and inside else None
            out.append(_Block(lo, hi, b, read, req, dst, want, n, into))
        return out

    @staticmethod
    def _cached(f: Any, blocks: list[_Block]) -> bool:
        """Whether the page cache holds the first and last bytes `blocks` need (a
        probe that never waits for the disk; a file read or written just before is
        cached whole, one dropped from the cache not at all)."""
        if not fs.reads_positionally(f):
            return False
        probe = as_bytes(torch.empty(PROBE_BYTES, dtype=torch.uint8))
        for at in (blocks[0].lo, max(blocks[-1].hi - PROBE_BYTES, blocks[0].lo)):
            want = min(PROBE_BYTES, blocks[-1].hi - at)
            if fs.read_cached_into(f, at, probe[:want]) < want:
                return False
        return True

    def _read_cached(self, f: Any, url: str, blocks: list[_Block], verify: Checksum) -> None:
        """`blocks` from the page cache: CACHED_READERS threads take them in order,
        each read and checksummed at once while in the core's cache. The first failure
        (in file order) is raised once every thread has stopped."""
        scratch = threading.local()
        stop = threading.Event()

        def one(blk: _Block) -> None:
            if stop.is_set():
                return
            try:
                buf: torch.Tensor | None = getattr(scratch, "buf", None)
                if blk.into is None and (buf is None or buf.numel() < blk.hi - blk.lo):
                    buf = scratch.buf = torch.empty(blk.hi - blk.lo, dtype=torch.uint8)
                self._read_block(f, url, blk, verify, buf)
            except BaseException:
                stop.set()
                raise

        with ThreadPoolExecutor(CACHED_READERS, thread_name_prefix="ckpt-read") as pool:
            pending = [pool.submit(one, blk) for blk in blocks]
        for done in pending:
            done.result()

    def _read_block(
        self, f: Any, url: str, blk: _Block, verify: Checksum, scratch: torch.Tensor | None
    ) -> None:
        """Read and verify one block: straight into its tensor, or (at a request's
        edge) into `scratch`, then only its wanted bytes copied."""
        if blk.into is not None:
            self._fill(f, blk.lo, [blk.into], url, blk.req.tensor)
            self._check(verify, blk.into, blk, url)
            return
        if scratch is None:
            raise ValueError("an edge block needs scratch")  # a bug in the caller
        data = as_bytes(scratch)[: blk.hi - blk.lo]
        self._fill(f, blk.lo, [data], url, blk.req.tensor)
        self._check(verify, data, blk, url)
        a, z = max(blk.lo, blk.want), min(blk.hi, blk.want + blk.n)
        blk.dst.view(torch.uint8)[a - blk.want : z - blk.want].copy_(
            torch.frombuffer(data[a - blk.lo : z - blk.lo], dtype=torch.uint8)
        )

    def _read_from_disk(self, f: Any, url: str, blocks: list[_Block], verify: Checksum) -> None:
        """`blocks` (in file order) from the disk, one stream: runs of contiguous
        direct blocks in one call each (up to SPAN_BYTES), each block verified by a
        checker thread while the next run is read; edge blocks through scratch."""
        run: list[_Block] = []
        scratch: torch.Tensor | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-verify") as checker:
            checks: list[Future[None]] = []

            def read_run() -> None:
                if not run:
                    return
                direct = [blk.into for blk in run if blk.into is not None]
                self._fill(f, run[0].lo, direct, url, run[0].req.tensor)
                for blk, data in zip(run, direct, strict=True):
                    checks.append(checker.submit(self._check, verify, data, blk, url))
                run.clear()

            try:
                for blk in blocks:
                    if blk.into is not None:
                        if run and (blk.lo != run[-1].hi or blk.hi - run[0].lo > SPAN_BYTES):
                            read_run()
                        run.append(blk)
                        continue
                    read_run()
                    if scratch is None or scratch.numel() < blk.hi - blk.lo:
                        scratch = torch.empty(blk.hi - blk.lo, dtype=torch.uint8)
                    self._read_block(f, url, blk, verify, scratch)
                read_run()
                for done in checks:
                    done.result()
            finally:
                for pending in checks:
                    pending.cancel()

    @staticmethod
    def _fill(f: Any, offset: int, into: list[memoryview], url: str, tensor: str) -> None:
        """Read the contiguous bytes at `offset` into `into`; a short file is corrupt."""
        try:
            fs.read_into_many(f, offset, into)
        except EOFError as exc:
            why = f"{url} is truncated: tensor {tensor!r} ({exc})"
            raise CorruptCheckpoint(why, tensor) from exc

    @staticmethod
    def _check(verify: Checksum, data: memoryview, blk: _Block, url: str) -> None:
        """`data`, the bytes read for `blk`, must match the manifest's checksum."""
        fragment = blk.read.fragment
        if verify(data, 0) != fragment.checksums[blk.b]:
            raise CorruptCheckpoint(
                f"checksum mismatch in tensor {blk.req.tensor!r} (block {blk.b} of its "
                f"fragment [{fragment.lo}, {fragment.hi}) in {url})",
                blk.req.tensor,
            )

    @staticmethod
    def _open(url: str, tensor: str) -> Any:
        try:
            return fs.open_read(url, follow_links=False)
        except FileNotFoundError as exc:
            raise CorruptCheckpoint(f"{url} is missing: tensor {tensor!r}", tensor) from exc
        except OSError as exc:
            raise CorruptCheckpoint(f"{url} cannot be read: {exc}", tensor) from exc

    def file_header_problems(self) -> list[str]:
        """Each tensor file's own (safetensors) header must parse and agree with the
        manifest: the checksums cover the data, not the header, and a file whose
        header no longer parses is useless to every other reader of the format."""
        problems = []
        for name in self.manifest.files():
            url = self._file_url(name)
            try:
                with self._open(url, "") as f:
                    size = f.seek(0, 2)
                    f.seek(0)
                    first8 = f.read(8)
                    n = tensorfile.header_length(first8)
                    if 8 + n > size:
                        raise tensorfile.TensorFileError(f"header of {n} bytes is past the end")
                    entries, _ = tensorfile.parse(first8 + f.read(n), size)
            except (CorruptCheckpoint, tensorfile.TensorFileError) as exc:
                problems.append(f"{url}: header is unreadable ({exc})")
                continue
            starts = {e.start: e for e in entries}
            for frag in self.manifest.fragments:
                if frag.file != name:
                    continue
                itemsize = self.manifest.tensors[frag.tensor].itemsize
                entry = starts.get(frag.offset)
                if entry is None or entry.nbytes != frag.nbytes(itemsize):
                    problems.append(
                        f"{url}: header does not describe tensor {frag.tensor!r} "
                        f"[{frag.lo}, {frag.hi}) at byte {frag.offset}"
                    )
        return problems


def load_newest(
    url: str, requests: list[Request], local_dir: str = "", at_most: int | None = None
) -> tuple[Manifest, LoadReport]:
    """Fill `requests` from the newest committed checkpoint (no newer than `at_most`)
    that verifies; older ones are tried in turn, and the report says why newer ones
    were skipped. Raises NoCheckpoint when none is usable."""
    skipped: list[str] = []
    for step in reversed(catalog.committed(url)):
        if at_most is not None and step > at_most:
            continue
        try:
            reader = CheckpointReader(url, step, local_dir)
            reader.read(requests)
            check_restored(reader.manifest, requests)
        except (CorruptCheckpoint, ManifestError, OSError, EOFError) as exc:
            why = f"step {step}: {exc}"
            log.warning("checkpoint %s unusable, falling back to the previous one: %s", url, why)
            skipped.append(why)
            continue
        return reader.manifest, LoadReport(step, url, reader.bytes_read, skipped)
    detail = "; ".join(skipped) if skipped else "none committed"
    raise NoCheckpoint(f"no usable checkpoint under {url} ({detail})")


def check_restored(manifest: Manifest, requests: list[Request]) -> None:
    """A restored state must agree with itself: step in the extra state, the learning
    rate of the schedule at that step, and moments that are not all zero after step 0."""
    try:
        _check_extra(manifest)
    except ManifestError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError, ArithmeticError) as exc:
        # extra is free-form JSON from a file: a value of the wrong type is a bad
        # checkpoint, said as such, never a crash (found by test_checkpoint_fuzz)
        raise ManifestError(f"the manifest's extra state is malformed ({exc!r})") from exc
    if manifest.step > 0:
        for req in requests:
            moment = req.tensor.startswith("optim/exp_avg_sq/") and req.out.numel() > 16
            if moment and not bool(req.out.any()):
                raise ManifestError(f"{req.tensor!r} is all zeros at step {manifest.step}")


def _check_extra(manifest: Manifest) -> None:
    """The step and learning rate the extra state records agree with the manifest."""
    extra = manifest.extra
    if "step" in extra and int(extra["step"]) != manifest.step:
        raise ManifestError(f"extra state says step {extra['step']}, the manifest {manifest.step}")
    if "lr" in extra and "schedule" in extra:
        sched = extra["schedule"]
        expected = lr_at(
            manifest.step,
            peak=float(sched["peak"]),
            warmup=int(sched["warmup"]),
            total=int(sched["total"]),
        )
        if not math.isclose(float(extra["lr"]), expected, rel_tol=1e-6, abs_tol=1e-12):
            raise ManifestError(
                f"saved learning rate {extra['lr']} disagrees with the schedule ({expected}) "
                f"at step {manifest.step}"
            )


def describe(url: str, step: int) -> dict[str, Any]:
    """What `elastiq ckpt inspect` prints for one checkpoint."""
    m = read_manifest(url, step)
    marker = json.loads(fs.read_bytes(fs.join(url, step_dir(step), COMMITTED)) or b"{}")
    return {
        "step": m.step,
        "parts": m.parts,
        "files": m.files(),
        "bytes": m.total_bytes(),
        "tensors": len(m.tensors),
        "fragments": len(m.fragments),
        "tiers": m.tiers,
        "extra": m.extra,
        "committed_at": marker.get("time"),
    }
