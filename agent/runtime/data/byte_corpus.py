"""The zero-set-up dataset: text files read as bytes (token id = byte value).

The corpus is the concatenation of text files (default: the Python standard
library's sources, present on every machine; else any fsspec path, directory or
glob), at most `data_max_bytes`. `SampleOrder` (sample_order.py) cuts it into samples.
"""

from __future__ import annotations

import logging
import os
import sysconfig
from collections.abc import Iterable, Iterator

import torch

from elastiq import fs

log = logging.getLogger(__name__)


def default_corpus_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _stdlib_sources(root: str) -> Iterator[str]:
    """.py files under the stdlib root in sorted walk order, without site-packages
    (not part of the standard library, and different on every machine)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def load_corpus(url: str, max_bytes: int) -> torch.Tensor:
    """Bytes of the corpus as a uint8 tensor, files in sorted order, at most max_bytes."""
    root = url or default_corpus_root()
    files: Iterable[str] = fs.expand(root) if url else _stdlib_sources(root)
    read = fs.read_bytes if url else _read_local
    chunks: list[bytes] = []
    total = 0
    for path in files:
        if total >= max_bytes:
            break
        data = read(path)[: max_bytes - total]
        chunks.append(data)
        total += len(data)
    if total == 0:
        raise ValueError(f"the corpus at {root!r} is empty")
    log.info("corpus: %d bytes from %d files under %s", total, len(chunks), root)
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)


def _read_local(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class ByteCorpus:
    """A corpus held in memory as bytes: token id = byte value (vocabulary 256)."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data
        self.num_tokens = int(data.numel())
        self.description = f"{self.num_tokens} bytes of text"

    def read(self, start: int, length: int) -> torch.Tensor:
        return self.data[start : start + length].long()
