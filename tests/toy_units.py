"""A small model written against elastiq's public API, as a user would bring one: an
embedding, residual MLP blocks and a head, each a layer unit. Named by entry point in
the tests (`tests.toy_units:build`), so only the workers import it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import elastiq


class Embed(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tok(ids)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Head(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x))


def build(args: dict[str, Any]) -> elastiq.UnitModel:
    vocab, dim, blocks = int(args.get("vocab", 256)), int(args["dim"]), int(args["blocks"])
    units = [Embed(vocab, dim), *(Block(dim) for _ in range(blocks)), Head(vocab, dim)]
    return elastiq.UnitModel(units=units)


def build_plain(args: dict[str, Any]) -> nn.Module:
    """Not split into units: trained data-parallel as one unit."""
    dim = int(args["dim"])
    return nn.Sequential(Embed(256, dim), Block(dim), Head(256, dim))


def build_unchained(args: dict[str, Any]) -> elastiq.UnitModel:
    return elastiq.UnitModel(units=[Embed(256, 32), Head(256, 16)])


def build_nothing(args: dict[str, Any]) -> int:
    return 3


class Narrow(nn.Module):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def build_narrowing(args: dict[str, Any]) -> elastiq.UnitModel:
    """Boundaries of different widths: fine for data parallelism, not for pipelines."""
    return elastiq.UnitModel(units=[Embed(256, 32), Narrow(32, 16), Head(256, 16)])
