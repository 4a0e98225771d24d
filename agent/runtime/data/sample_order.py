"""Global sample index -> token sequence, the same whatever the layout.

A token source (a byte corpus, a token file) is cut into non-overlapping chunks of
seq_len+1 tokens; epoch e visits them in a permutation seeded by (seed, e). Global
sample g of the run is chunk perm_e[g mod N] with e = g div N, and step s consumes
samples [s*B, (s+1)*B). The data position is therefore the step number itself:
restoring a step restores the position, and no sample is skipped or repeated whatever
the number of workers.
"""

from __future__ import annotations

from typing import Protocol

import torch


class TokenSource(Protocol):
    """A flat sequence of token ids."""

    num_tokens: int
    description: str

    def read(self, start: int, length: int) -> torch.Tensor:
        """Token ids [start, start+length) as int64."""
        ...


class SampleOrder:
    """Maps global sample indices to token sequences; layout-independent."""

    def __init__(self, source: TokenSource, seq_len: int, seed: int, global_batch: int = 1) -> None:
        """ValueError when the source holds fewer than `global_batch` samples (one
        step would repeat samples within itself)."""
        self.source = source
        self.span = seq_len + 1
        self.num_chunks = source.num_tokens // self.span
        if self.num_chunks < max(1, global_batch):
            raise ValueError(
                f"the dataset ({source.description}) holds {self.num_chunks} samples of "
                f"seq_len+1={self.span} tokens, fewer than one global batch of "
                f"{global_batch}: use more data, a shorter seq_len or a smaller global_batch"
            )
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
            out[i] = self.source.read(chunk * self.span, self.span)
        return out
