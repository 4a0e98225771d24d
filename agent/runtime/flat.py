"""Flat training state: one fp32 buffer for a stage's parameters, one for its
gradients, and AdamW that updates any contiguous interval of them.

Why flat: it makes every state movement a byte range. Gradients reduce in one
collective; ZeRO splits the optimizer state (and gradients) into contiguous
intervals per data-parallel rank; a resharding plan moves intervals by their
overlaps; a snapshot is three memcpys. With data parallelism alone the interval is
the whole buffer.

Parameters and their `.grad` are views into the buffers, so autograd accumulates
straight into the flat gradient (never set grads to None: that would detach them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class ParamSlot:
    name: str
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class FlatParams:
    """Parameters of `modules` rebased onto one flat buffer (plus a grad buffer)."""

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module]],
        extra: int = 0,
        rename: Callable[[str, str], str] | None = None,
    ) -> None:
        """`modules`: (prefix, module); a parameter is named `prefix.name`, or
        `rename(prefix, name)` when given (the model's own names)."""
        name_of = rename or (lambda prefix, n: f"{prefix}.{n}")
        named = [(name_of(prefix, n), p) for prefix, m in modules for n, p in m.named_parameters()]
        self.numel = sum(p.numel() for _, p in named)
        self.slots: list[ParamSlot] = []
        self.data = torch.empty(self.numel, dtype=torch.float32)
        # the gradient buffer carries `extra` control slots behind the gradients, so
        # per-step control values ride along in the same collective for free
        self.grad_and_extra = torch.zeros(self.numel + extra, dtype=torch.float32)
        self.grad = self.grad_and_extra[: self.numel]
        self.extra = self.grad_and_extra[self.numel :]
        offset = 0
        for name, p in named:
            n = p.numel()
            self.data[offset : offset + n].copy_(p.data.reshape(-1))
            p.data = self.data[offset : offset + n].view_as(p)
            p.grad = self.grad[offset : offset + n].view_as(p)
            self.slots.append(ParamSlot(name, offset, tuple(p.shape)))
            offset += n

    def zero_grad(self) -> None:
        self.grad_and_extra.zero_()


@dataclass(kw_only=True, slots=True)
class AdamWConfig:
    """Hyper-parameters of the flat AdamW."""

    beta1: float = 0.9
    """First-moment decay."""
    beta2: float = 0.95
    """Second-moment decay."""
    eps: float = 1e-8
    """Denominator epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""

    def __post_init__(self) -> None:
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"betas must be in [0, 1): {self.beta1}, {self.beta2}")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("eps must be positive and weight_decay >= 0")


class FlatAdamW:
    """AdamW over the interval [lo, hi) of a flat buffer; owns that interval's moments."""

    def __init__(self, lo: int, hi: int, cfg: AdamWConfig) -> None:
        if not 0 <= lo <= hi:
            raise ValueError(f"bad interval [{lo}, {hi})")
        self.lo, self.hi = lo, hi
        self.cfg = cfg
        self.exp_avg = torch.zeros(hi - lo, dtype=torch.float32)
        self.exp_avg_sq = torch.zeros(hi - lo, dtype=torch.float32)
        self.step_count = 0
        # (lo, hi, scale) flat ranges whose learning rate is scaled (CheckFree-rebuilt
        # layers); coordinates of the whole flat buffer, like lo and hi
        self.lr_scaled: list[tuple[int, int, float]] = []

    def resize(self, lo: int, hi: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        """Own [lo, hi) from now on, keeping the moments of the overlap with the old
        interval; returns the old interval and its moments (for sending to others)."""
        if not 0 <= lo <= hi:
            raise ValueError(f"bad interval [{lo}, {hi})")
        old = (self.lo, self.hi, self.exp_avg, self.exp_avg_sq)
        self.exp_avg = torch.zeros(hi - lo, dtype=torch.float32)
        self.exp_avg_sq = torch.zeros(hi - lo, dtype=torch.float32)
        a, b = max(lo, self.lo), min(hi, self.hi)
        if a < b:
            self.exp_avg[a - lo : b - lo].copy_(old[2][a - old[0] : b - old[0]])
            self.exp_avg_sq[a - lo : b - lo].copy_(old[3][a - old[0] : b - old[0]])
        self.lo, self.hi = lo, hi
        return old

    def scaled_within(self, lo: int, hi: int) -> list[tuple[int, int, float]]:
        """The learning-rate scaled ranges that meet [lo, hi), relative to lo."""
        return [
            (max(a, lo) - lo, min(b, hi) - lo, k)
            for a, b, k in self.lr_scaled
            if max(a, lo) < min(b, hi)
        ]

    def step(self, params: torch.Tensor, grads: torch.Tensor, lr: float) -> None:
        """Update params[lo:hi] in place from grads (the same interval)."""
        c = self.cfg
        self.step_count += 1
        p = params[self.lo : self.hi]
        g = grads[self.lo : self.hi]
        scaled = [(slice(a, b), k) for a, b, k in self.scaled_within(self.lo, self.hi)]
        if c.weight_decay:
            p.mul_(1 - lr * c.weight_decay)
            for s, k in scaled:
                p[s].mul_((1 - k * lr * c.weight_decay) / (1 - lr * c.weight_decay))
        self.exp_avg.lerp_(g, 1 - c.beta1)
        self.exp_avg_sq.mul_(c.beta2).addcmul_(g, g, value=1 - c.beta2)
        bias1 = 1 - c.beta1**self.step_count
        bias2 = 1 - c.beta2**self.step_count
        denom = (self.exp_avg_sq / bias2).sqrt_().add_(c.eps)
        p.addcdiv_(self.exp_avg, denom, value=-lr / bias1)
        for s, k in scaled:  # the remaining (k - 1) x lr of the scaled ranges
            p[s].addcdiv_(self.exp_avg[s], denom[s], value=-(k - 1) * lr / bias1)
