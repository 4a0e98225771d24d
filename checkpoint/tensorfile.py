"""The safetensors file layout, written and read without the safetensors package.

Pure byte layout, no I/O: an 8-byte little-endian header length, a JSON header
(name -> dtype, shape, [begin, end) within the data section; optional
"__metadata__" of strings), padded with spaces to a multiple of 8, then the raw
little-endian data. Writing it ourselves lets the engine stream fragments from
its buffer pool straight into the file, and lets a reader locate any byte range
from the manifest alone. Files written here load with `safetensors.torch.load_file`
(a test proves it).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from elastiq.checkpoint.manifest import DTYPE_SIZES

TORCH_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
MAX_HEADER = 100 << 20


class TensorFileError(ValueError):
    """A tensor file whose header is malformed or does not match its size."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    """Absolute byte offset of the entry's data in the file."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def dtype_name(dtype: torch.dtype) -> str:
    name = DTYPE_NAMES.get(dtype)
    if name is None:
        raise ValueError(f"dtype {dtype} has no safetensors name here; use one of {DTYPE_NAMES}")
    return name


def layout(
    entries: Sequence[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> tuple[bytes, list[Entry]]:
    """The file prefix (length + header) for `entries` (name, dtype, shape) stored
    in order, and each entry's absolute data offset."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    at = 0
    spans = []
    for name, dtype, shape in entries:
        n = math.prod(shape) * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + n]}
        spans.append((name, dtype, shape, at))
        at += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    prefix = struct.pack("<Q", len(text)) + text
    return prefix, [Entry(n, d, s, len(prefix) + a) for n, d, s, a in spans]


def header_length(first8: bytes) -> int:
    if len(first8) < 8:
        raise TensorFileError("file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER:
        raise TensorFileError(f"header length {n} is implausible (corrupt file?)")
    return int(n)


def parse(prefix: bytes, file_size: int) -> tuple[list[Entry], dict[str, str]]:
    """Entries and metadata from a file's first 8 + header_length bytes."""
    n = header_length(prefix)
    try:
        header = json.loads(prefix[8 : 8 + n])
    except ValueError as exc:
        raise TensorFileError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise TensorFileError("header is not a JSON object")
    metadata = {str(k): str(v) for k, v in dict(header.pop("__metadata__", {}) or {}).items()}
    entries = []
    for name, e in header.items():
        try:
            dtype, shape = str(e["dtype"]), tuple(int(d) for d in e["shape"])
            begin, end = (int(x) for x in e["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TensorFileError(f"entry {name!r} is malformed: {exc!r}") from exc
        if dtype not in DTYPE_SIZES:
            raise TensorFileError(f"entry {name!r} has unknown dtype {dtype!r}")
        entry = Entry(str(name), dtype, shape, 8 + n + begin)
        if end - begin != entry.nbytes or entry.start + entry.nbytes > file_size:
            raise TensorFileError(
                f"entry {name!r} does not fit: {end - begin} bytes for shape {list(shape)}, "
                f"file of {file_size} bytes"
            )
        entries.append(entry)
    return sorted(entries, key=lambda x: x.start), metadata


def as_bytes(tensor: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes, without a copy."""
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        raise ValueError("tensor must be contiguous")
    if not flat.numel():
        return memoryview(b"")
    return memoryview(cast(bytes, flat.view(torch.uint8).numpy()))
