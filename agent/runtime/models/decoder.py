"""The built-in small LLaMA-style decoder, as a list of layer units.

Unit 0 is the token embedding, units 1..n are transformer blocks (RMSNorm,
rotary causal attention, RMSNorm, SwiGLU), unit n+1 is the head (RMSNorm +
projection to the vocabulary). Any contiguous range of units is a valid
pipeline stage, and each unit is initialised from its own seed (seed, unit), so
the initial weights do not depend on how the units are laid out.

It is itself an entry point (`build`, see elastiq/model_api.py): a job with an empty
`model_entry` trains it through the same path as any user model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from elastiq.config import ModelConfig
from elastiq.model_api import UnitModel


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Embedding(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.dim)
        nn.init.normal_(self.tok.weight, std=0.02, generator=gen)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok(tokens)


def _rotary(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    seq = x.shape[-2]
    c, s = cos[:seq], sin[:seq]
    out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return out.flatten(-2)


class Block(nn.Module):
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, cfg: ModelConfig, max_seq: int, gen: torch.Generator) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.dim // cfg.n_heads
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.attn_norm = RMSNorm(cfg.dim)
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.mlp_norm = RMSNorm(cfg.dim)
        self.w_gate = nn.Linear(cfg.dim, hidden, bias=False)
        self.w_up = nn.Linear(cfg.dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, cfg.dim, bias=False)
        self.dropout = cfg.dropout
        for lin in (self.wqkv, self.w_gate, self.w_up):
            nn.init.normal_(lin.weight, std=0.02, generator=gen)
        for lin in (self.wo, self.w_down):
            nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.n_layers), generator=gen)
        cos, sin = _rotary(max_seq, self.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(
        self, x: torch.Tensor, dropout_masks: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.wqkv(self.attn_norm(x)).split(d, dim=-1)
        q, k, v = (y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for y in (q, k, v))
        q = _apply_rotary(q, self.cos, self.sin)
        k = _apply_rotary(k, self.cos, self.sin)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = self.wo(attn.transpose(1, 2).reshape(b, t, d))
        if dropout_masks is not None:
            h = h * dropout_masks[0]
        x = x + h
        m = self.w_down(F.silu(self.w_gate(self.mlp_norm(x))) * self.w_up(self.mlp_norm(x)))
        if dropout_masks is not None:
            m = m * dropout_masks[1]
        return x + m


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        nn.init.normal_(self.out.weight, std=0.02, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x))


def build_unit(cfg: ModelConfig, unit: int, seq_len: int, seed: int) -> nn.Module:
    """Layer unit `unit` (0 = embedding, n_layers+1 = head), initialised from (seed, unit)."""
    if not 0 <= unit <= cfg.n_layers + 1:
        raise ValueError(f"unit {unit} out of range 0..{cfg.n_layers + 1}")
    # a private generator: no global RNG state, so threads and call order cannot interfere
    gen = torch.Generator().manual_seed(seed * 100_003 + unit)
    if unit == 0:
        return Embedding(cfg, gen)
    if unit == cfg.n_layers + 1:
        return Head(cfg, gen)
    return Block(cfg, seq_len, gen)


def num_units(cfg: ModelConfig) -> int:
    return cfg.n_layers + 2


#: the built-in decoder's entry point: what a job with an empty model_entry trains
ENTRY_POINT = "elastiq.agent.runtime.models.decoder:build"


def build(args: dict[str, Any]) -> UnitModel:
    """The built-in decoder as an entry point. `args`: the ModelConfig fields, plus
    `seq_len` (the rotary tables' length) and `seed`; each unit is initialised from
    (seed, unit), so the weights do not depend on how units are laid out."""
    fields = {k: v for k, v in args.items() if k not in ("seq_len", "seed")}
    cfg = ModelConfig(**fields)
    seq_len, seed = int(args.get("seq_len", 64)), int(args.get("seed", 0))
    return UnitModel(units=[build_unit(cfg, u, seq_len, seed) for u in range(num_units(cfg))])


def entry_args(model: ModelConfig, seq_len: int, seed: int) -> dict[str, Any]:
    """`build`'s arguments for a job that trains the built-in decoder."""
    return {**dataclasses.asdict(model), "seq_len": seq_len, "seed": seed}
