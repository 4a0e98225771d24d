"""Token files: a flat array of uint16 or uint32 token ids, as nanoGPT-style and
Megatron-style pipelines write them (and `elastiq data tokenize` will).

A local file is memory-mapped, so only the samples a step touches are read; any other
fsspec URL is read by byte range. Opening checks what would otherwise fail mid-run: a
size that is not a whole number of tokens (wrong dtype, or a truncated file), and token
ids at or above the model's vocabulary (one pass over the file, about 1 s per GB here).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from elastiq import fs

log = logging.getLogger(__name__)

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
_SCAN_TOKENS = 1 << 24


class TokenFile:
    def __init__(self, url: str, dtype: str, vocab: int) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"token dtype {dtype!r}: use one of {sorted(DTYPES)}")
        self.url = url
        self.dtype = np.dtype(DTYPES[dtype])
        nbytes = fs.size(url)
        if nbytes % self.dtype.itemsize:
            raise ValueError(
                f"token file {url} has {nbytes} bytes, not a whole number of {dtype} tokens "
                f"({self.dtype.itemsize} bytes each): is data_format right, or is the file "
                "truncated?"
            )
        self.num_tokens = nbytes // self.dtype.itemsize
        self.description = f"{self.num_tokens} {dtype} tokens in {url}"
        path = fs.local_path(url)
        self._map: np.ndarray | None = None
        self._file = None
        if path is not None:
            self._map = np.memmap(path, dtype=self.dtype, mode="r")
        else:
            self._file = fs.open_read(url)
        self._check_vocab(vocab)

    def _check_vocab(self, vocab: int) -> None:
        started = time.monotonic()
        top = 0
        for start in range(0, self.num_tokens, _SCAN_TOKENS):
            chunk = self._array(start, min(_SCAN_TOKENS, self.num_tokens - start))
            if chunk.size:
                top = max(top, int(chunk.max()))
        if top >= vocab:
            raise ValueError(
                f"token file {self.url} holds token id {top}, but the model's vocabulary has "
                f"{vocab} entries: set the model's vocabulary size to at least {top + 1}"
            )
        log.info(
            "%s: ids below %d (checked in %.2fs)",
            self.description,
            top + 1,
            time.monotonic() - started,
        )

    def _array(self, start: int, length: int) -> np.ndarray:
        if self._map is not None:
            return np.asarray(self._map[start : start + length])
        out = bytearray(length * self.dtype.itemsize)
        fs.read_into(self._file, start * self.dtype.itemsize, memoryview(out))
        return np.frombuffer(bytes(out), dtype=self.dtype)

    def read(self, start: int, length: int) -> torch.Tensor:
        return torch.from_numpy(self._array(start, length).astype(np.int64))
