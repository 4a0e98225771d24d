"""The CheckFree rule: rebuild a lost pipeline stage from its neighbours. Pure.

From "All is Not Lost: LLM Recovery without Checkpoints": when a stage's weights
exist nowhere (no live replica, no buddy snapshot, no checkpoint fresh enough),
stage i becomes the average of stages i-1 and i+1, weighted by the L2 norms of
their gradients at the last step (after clipping):

    W_i = (a * W_{i+1} + b * W_{i-1}) / (a + b),  a = |g_{i+1}| + eps, b = |g_{i-1}| + eps

Its optimizer state starts fresh and its learning rate is scaled up from then on.
The model is then an approximation: the plan, the events and `elastiq status`
say "checkfree". Here a stage may hold several transformer blocks (layer units),
so every lost block is rebuilt from the two blocks that border the gap: the last
surviving block before it and the first after it. With one block per stage this
is exactly the paper's rule. The embedding and the head have no same-shaped
neighbour; losing them needs CheckFree+ (not built), so the rule refuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EPS = 1e-8


class CheckFreeError(ValueError):
    """The lost units cannot be rebuilt from neighbours (an edge unit, or no gap)."""


@dataclass(frozen=True, slots=True)
class CheckFreeSources:
    """Lost units [lo, hi) are rebuilt from unit `prev` and unit `next`."""

    lo: int
    hi: int
    prev: int
    next: int


def sources(lost_lo: int, lost_hi: int, num_units: int) -> CheckFreeSources:
    """The neighbour units of a lost contiguous range of units. Unit 0 is the
    embedding and unit num_units-1 the head; both must survive."""
    if not 0 <= lost_lo < lost_hi <= num_units:
        raise CheckFreeError(f"lost units [{lost_lo}, {lost_hi}) are not a range of {num_units}")
    if lost_lo == 0 or lost_hi == num_units:
        edge = "embedding (first stage)" if lost_lo == 0 else "head (last stage)"
        raise CheckFreeError(
            f"the lost units [{lost_lo}, {lost_hi}) include the {edge}, which has no "
            "same-shaped neighbour; CheckFree+ would be needed (not built)"
        )
    if lost_lo - 1 < 1 or lost_hi > num_units - 2:
        raise CheckFreeError(
            f"lost units [{lost_lo}, {lost_hi}) have no transformer block on both sides"
        )
    return CheckFreeSources(lost_lo, lost_hi, lost_lo - 1, lost_hi)


def weights(norm_next: float, norm_prev: float, eps: float = EPS) -> tuple[float, float]:
    """(a, b): the next stage's and the previous stage's weight. A norm that is not
    finite (never measured) counts as equal to the other, or 1 if neither is."""
    ok_next, ok_prev = math.isfinite(norm_next), math.isfinite(norm_prev)
    fallback = norm_next if ok_next else norm_prev if ok_prev else 1.0
    a = (norm_next if ok_next else fallback) + eps
    b = (norm_prev if ok_prev else fallback) + eps
    return a, b


def average(w_next: torch.Tensor, w_prev: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """(a * w_next + b * w_prev) / (a + b), elementwise, in a new tensor."""
    if w_next.shape != w_prev.shape:
        raise CheckFreeError(f"neighbours differ in shape: {w_next.shape} vs {w_prev.shape}")
    return (w_next * a + w_prev * b) / (a + b)
