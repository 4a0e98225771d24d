"""The learning-rate schedule, pure: shared by the trainer (which follows it) and
the checkpoint restorer (which checks a restored step's saved rate against it)."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to peak/10 at `total` (1-based step)."""
    if warmup and step <= warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
