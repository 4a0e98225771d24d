"""The universal checkpoint manifest: pure data, JSON in and out, validated.

Sits under the engine (which writes it), the restorer (which plans range reads
from it) and the converters. No I/O here. A checkpoint is a directory; each
saving rank wrote one tensor file in the safetensors layout holding *fragments*:
contiguous element ranges [lo, hi) of flattened full tensors. The manifest maps
every tensor name (model parameters, optimizer moments) to its dtype, full shape
and the fragments that hold it, with the byte offset of each fragment in its file
and a checksum per block of `block_bytes` (CRC-32C; CRC-32 in version 1
manifests), so a reader under any layout reads only
the byte ranges it needs and verifies exactly those.

A manifest read from storage is untrusted: every file name must stay inside the
checkpoint directory, every range must fit its tensor, and fragments of a tensor
must cover it exactly once. Anything else is a `ManifestError` that names what
is wrong, raised before a single tensor byte is read.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from elastiq.checkpoint import checksums

FORMAT = "elastiq-universal"
#: version 2 names its checksum algorithm ("checksum") and lists each fragment's
#: block checksums as "checksums"; version 1 (CRC-32, as "crc32") still reads
VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
COMMITTED = "COMMITTED"
DEFAULT_BLOCK_BYTES = 8 << 20
#: a manifest of a 70B model with ZeRO-3 over 1,024 ranks is tens of MB
MAX_MANIFEST_BYTES = 512 << 20
#: 2^48 elements (1 PB of float32) per tensor: above it a size is not a size
MAX_NUMEL = 1 << 48
MAX_DIMS = 16

# safetensors dtype names and their sizes in bytes
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ManifestError(ValueError):
    """A manifest that is malformed or unsafe; nothing was loaded."""


def _whole(value: object) -> int:
    """An integer field as JSON wrote it. A float is refused, not truncated: 2.7
    bytes is a damaged manifest, and 8e8609 parses as infinity, which int() cannot
    convert (a fuzzed manifest found that)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}"[:80])
    return value


@dataclass(frozen=True, slots=True)
class TensorMeta:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


@dataclass(frozen=True, slots=True)
class Fragment:
    """Elements [lo, hi) of the flattened `tensor`, stored at byte `offset` of `file`."""

    tensor: str
    file: str
    lo: int
    hi: int
    offset: int
    checksums: tuple[int, ...]
    """The manifest's checksum of each `block_bytes` block of the fragment's bytes (the
    last may be short)."""

    def nbytes(self, itemsize: int) -> int:
        return (self.hi - self.lo) * itemsize


@dataclass(slots=True)
class Manifest:
    step: int
    tensors: dict[str, TensorMeta]
    fragments: list[Fragment]
    extra: dict[str, Any] = field(default_factory=dict)
    """Step, data position, RNG seed, LR schedule, job config: JSON values."""
    parts: int = 1
    block_bytes: int = DEFAULT_BLOCK_BYTES
    tiers: dict[str, str] = field(default_factory=dict)
    """Where the checkpoint lives and in what state, e.g. {"remote": "committed"}."""
    checksum: str = checksums.DEFAULT
    """The block checksums' algorithm (checkpoint/checksums.py)."""

    def files(self) -> list[str]:
        return sorted({f.file for f in self.fragments})

    def total_bytes(self) -> int:
        return sum(f.nbytes(self.tensors[f.tensor].itemsize) for f in self.fragments)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "step": self.step,
                "parts": self.parts,
                "block_bytes": self.block_bytes,
                "checksum": self.checksum,
                "tensors": {
                    n: {"dtype": t.dtype, "shape": list(t.shape)}
                    for n, t in sorted(self.tensors.items())
                },
                "fragments": [
                    {
                        "tensor": f.tensor,
                        "file": f.file,
                        "lo": f.lo,
                        "hi": f.hi,
                        "offset": f.offset,
                        "checksums": [f"{c:08x}" for c in f.checksums],
                    }
                    for f in self.fragments
                ],
                "extra": self.extra,
                "tiers": self.tiers,
            },
            indent=1,
        )

    @classmethod
    def from_json(
        cls, text: str | bytes, where: str = "manifest", *, partial: bool = False
    ) -> Manifest:
        """Parse and validate; `partial`: one rank's part, which covers only its pieces."""
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{where}: not valid JSON ({exc})") from exc
        except RecursionError as exc:  # nested deeper than any manifest is
            raise ManifestError(f"{where}: JSON nested too deeply to be a manifest") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ManifestError(f"{where}: not an {FORMAT} manifest")
        version = raw.get("version")
        if version not in READABLE_VERSIONS:
            raise ManifestError(
                f"{where}: format version {version!r}; this elastiq reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))} (a newer elastiq wrote it?)"
            )
        # version 1: CRC-32 under "crc32"
        sums_key = "checksums" if version >= 2 else "crc32"
        try:
            tensors = {
                str(n): TensorMeta(str(n), str(t["dtype"]), tuple(_whole(d) for d in t["shape"]))
                for n, t in dict(raw["tensors"]).items()
            }
            fragments = [
                Fragment(
                    str(f["tensor"]),
                    str(f["file"]),
                    _whole(f["lo"]),
                    _whole(f["hi"]),
                    _whole(f["offset"]),
                    tuple(int(c, 16) for c in f[sums_key]),
                )
                for f in raw["fragments"]
            ]
            manifest = cls(
                step=_whole(raw["step"]),
                tensors=tensors,
                fragments=fragments,
                extra=dict(raw.get("extra", {})),
                parts=_whole(raw.get("parts", 1)),
                block_bytes=_whole(raw.get("block_bytes", DEFAULT_BLOCK_BYTES)),
                tiers={str(k): str(v) for k, v in dict(raw.get("tiers", {})).items()},
                checksum=str(raw["checksum"]) if version >= 2 else checksums.CRC32,
            )
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise ManifestError(f"{where}: malformed entry ({exc!r})"[:500]) from exc
        manifest.validate(where, partial=partial)
        return manifest

    def validate(self, where: str = "manifest", *, partial: bool = False) -> None:
        """Raise ManifestError unless every file is inside the checkpoint and every
        tensor is covered exactly once (at most once if `partial`) by in-range
        fragments with one checksum per block, of an algorithm this elastiq knows."""
        if not (0 <= self.step < 1 << 62 and 1 <= self.parts <= 1 << 20) or not (
            1 <= self.block_bytes <= 1 << 40
        ):
            raise ManifestError(f"{where}: bad step/parts/block_bytes")
        if self.checksum not in checksums.ALGORITHMS:
            raise ManifestError(
                f"{where}: unknown checksum algorithm {self.checksum!r}; this elastiq "
                f"knows {', '.join(checksums.ALGORITHMS)}"
            )
        for t in self.tensors.values():
            if t.dtype not in DTYPE_SIZES:
                raise ManifestError(f"{where}: tensor {t.name!r} has unknown dtype {t.dtype!r}")
            if any(d < 0 for d in t.shape) or len(t.shape) > MAX_DIMS:
                raise ManifestError(
                    f"{where}: tensor {t.name!r} has a negative dimension or more than "
                    f"{MAX_DIMS} dimensions"
                )
            if any(d > MAX_NUMEL for d in t.shape) or t.numel > MAX_NUMEL:
                raise ManifestError(
                    f"{where}: tensor {t.name!r} claims {t.numel} elements, more than "
                    f"{MAX_NUMEL}: not a real size"
                )
        by_tensor: dict[str, list[Fragment]] = {}
        for f in self.fragments:
            check_file_name(f.file, where)
            meta = self.tensors.get(f.tensor)
            if meta is None:
                raise ManifestError(f"{where}: a fragment names unknown tensor {f.tensor!r}")
            if not 0 <= f.lo < f.hi <= meta.numel or f.offset < 0:
                raise ManifestError(
                    f"{where}: fragment [{f.lo}, {f.hi}) of {f.tensor!r} is outside its "
                    f"{meta.numel} elements"
                )
            if len(f.checksums) != max(1, math.ceil(f.nbytes(meta.itemsize) / self.block_bytes)):
                raise ManifestError(
                    f"{where}: fragment of {f.tensor!r} has the wrong checksum count"
                )
            by_tensor.setdefault(f.tensor, []).append(f)
        for name, meta in self.tensors.items():
            at = 0
            for f in sorted(by_tensor.get(name, []), key=lambda f: f.lo):
                if f.lo < at or (f.lo > at and not partial):
                    kind = "overlap" if f.lo < at else "gap"
                    raise ManifestError(f"{where}: tensor {name!r} has a {kind} at element {at}")
                at = f.hi
            if at != meta.numel and not partial:
                raise ManifestError(
                    f"{where}: tensor {name!r} is covered up to element {at} of {meta.numel}"
                )


def check_file_name(name: str, where: str = "manifest") -> None:
    """A tensor file must be a plain name inside the checkpoint directory."""
    if not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ManifestError(
            f"{where}: file {name!r} is outside the checkpoint directory (only plain "
            "names are allowed: no '/', '..', or URL)"
        )


@dataclass(frozen=True, slots=True)
class Read:
    """Read bytes [start, end) of `file`; elements [lo, hi) of the request land at
    `dst_lo` of the destination; `blocks` are the CRC blocks fully inside the read."""

    file: str
    fragment: Fragment
    start: int
    end: int
    lo: int
    hi: int
    dst_lo: int


def plan_reads(manifest: Manifest, tensor: str, lo: int, hi: int) -> list[Read]:
    """Byte ranges that deliver elements [lo, hi) of `tensor`, widened to whole CRC
    blocks so every byte read can be verified."""
    meta = manifest.tensors.get(tensor)
    if meta is None:
        raise ManifestError(f"the checkpoint holds no tensor {tensor!r}")
    if not 0 <= lo <= hi <= meta.numel:
        raise ManifestError(f"[{lo}, {hi}) is outside {tensor!r} ({meta.numel} elements)")
    size, block = meta.itemsize, manifest.block_bytes
    reads = []
    for f in manifest.fragments:
        if f.tensor != tensor or f.hi <= lo or hi <= f.lo:
            continue
        a, b = max(lo, f.lo), min(hi, f.hi)
        first = (a - f.lo) * size // block * block
        last = min(-(-(b - f.lo) * size // block) * block, f.nbytes(size))
        reads.append(Read(f.file, f, f.offset + first, f.offset + last, a, b, a - lo))
    return sorted(reads, key=lambda r: (r.file, r.start))


def crc_blocks(read: Read, block_bytes: int) -> range:
    """Indexes of the fragment's CRC blocks that `read` spans."""
    first = (read.start - read.fragment.offset) // block_bytes
    last = -(-(read.end - read.fragment.offset) // block_bytes)
    return range(first, last)


def step_dir(step: int) -> str:
    return f"step-{step:09d}"


def parse_step_dir(name: str) -> int | None:
    m = re.fullmatch(r"step-(\d{9})", name)
    return int(m.group(1)) if m else None
