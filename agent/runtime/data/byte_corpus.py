"""The training data: a byte corpus and a sample order that no layout can change.

The corpus is the concatenation of text files (default: the Python standard
library's sources, present on every machine; else any fsspec path). It is cut
into non-overlapping chunks of seq_len+1 bytes; epoch e visits them in a
permutation seeded by (seed, e). Global sample g of the run is chunk
perm_e[g mod N] with e = g div N, and step s consumes samples
[s*B, (s+1)*B). The data position is therefore the step number itself: restoring
a step restores the position, and no sample is skipped or repeated whatever the
number of workers.
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


class SampleOrder:
    """Maps global sample indices to token sequences; layout-independent."""

    def __init__(self, corpus: torch.Tensor, seq_len: int, seed: int) -> None:
        self.corpus = corpus
        self.span = seq_len + 1
        self.num_chunks = corpus.numel() // self.span
        if self.num_chunks < 1:
            raise ValueError(f"corpus of {corpus.numel()} bytes is shorter than one sample")
        self.seed = seed
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
            self._perm = torch.randperm(self.num_chunks, generator=gen)
            self._perm_epoch = epoch
        return self._perm

    def samples(self, first: int, count: int) -> torch.Tensor:
        """Token sequences [count, seq_len+1] for global samples first..first+count-1."""
        out = torch.empty(count, self.span, dtype=torch.long)
        for i in range(count):
            g = first + i
            chunk = int(self._permutation(g // self.num_chunks)[g % self.num_chunks])
            start = chunk * self.span
            out[i] = self.corpus[start : start + self.span].long()
        return out
