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
neighbour; losing them needs CheckFree+.

CheckFree+: on odd micro-batches the first `first` blocks (group A) run after
the next `first` blocks (group B), and the last `last` blocks (group Z) before
the `last` blocks that precede them (group Y) (`unit_order`). So B learns to do
A's job and Y to do Z's: a lost first stage (embedding and A) is rebuilt by
copying B into A block by block and the embedding from the copy the next stage
keeps of it (`edge_sources`); likewise a lost last stage from Y and the head's
copy. The group sizes are fixed for the life of the job, so the computation does
not depend on the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tensors are only passed through: the controller runs without torch
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
            "same-shaped neighbour; only CheckFree+ (--checkfree-plus) can rebuild it"
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


@dataclass(frozen=True, slots=True)
class SwapGroups:
    """CheckFree+ block groups: A = [1, 1+first), B = [1+first, 1+2*first) at the
    front; Z = the last `last` blocks, Y = the `last` blocks before them. 0: none."""

    blocks: int
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.first < 0 or self.last < 0:
            raise CheckFreeError(f"swap groups of {self.first} and {self.last} blocks")
        if not self.one_pair and 2 * (self.first + self.last) > self.blocks:
            raise CheckFreeError(
                f"CheckFree+ swaps the first {self.first} blocks with the next {self.first} "
                f"and the last {self.last} with the {self.last} before them, but the model has "
                f"{self.blocks} blocks: the pairs overlap. Choose a pipeline layout whose "
                "first and last stages hold at most a quarter of the blocks each (or two "
                "stages of equal blocks)"
            )

    @property
    def one_pair(self) -> bool:
        """Two stages of equal blocks: A and Z are one group, swapped once."""
        return self.first == self.last and 2 * self.first == self.blocks


def unit_order(num_units: int, micro_batch: int, groups: SwapGroups | None) -> tuple[int, ...]:
    """The forward order of layer units for one micro-batch (0 = embedding, last =
    head): in unit order, except on odd micro-batches under CheckFree+."""
    order = list(range(num_units))
    if groups is None or micro_batch % 2 == 0:
        return tuple(order)
    n, f, last = num_units - 2, groups.first, groups.last
    if n != groups.blocks:
        raise CheckFreeError(f"swap groups for {groups.blocks} blocks, the model has {n}")
    if f:
        order[1 : 1 + 2 * f] = [*range(1 + f, 1 + 2 * f), *range(1, 1 + f)]
    if last and not groups.one_pair:
        z, y = n + 1 - last, n + 1 - 2 * last
        order[y : n + 1] = [*range(z, n + 1), *range(y, z)]
    return tuple(order)


@dataclass(frozen=True, slots=True)
class EdgeRebuild:
    """A lost first or last stage under CheckFree+: `copies` maps each lost block to
    its partner block; `edge` (0 or the head's unit) comes from a kept copy."""

    edge: int
    copies: tuple[tuple[int, int], ...]


def edge_sources(lost_lo: int, lost_hi: int, num_units: int, groups: SwapGroups) -> EdgeRebuild:
    """How CheckFree+ rebuilds lost units [lost_lo, lost_hi) that include the
    embedding or the head; CheckFreeError when it cannot."""
    head = num_units - 1
    if lost_lo == 0 and lost_hi == num_units:
        raise CheckFreeError("every layer unit is lost: nothing is left to copy from")
    if lost_lo == 0:
        if lost_hi - 1 > groups.first:
            raise CheckFreeError(
                f"the lost units [0, {lost_hi}) reach beyond the {groups.first} first blocks "
                "whose swapped partners CheckFree+ trains, so their partners are lost too"
            )
        return EdgeRebuild(0, tuple((u, u + groups.first) for u in range(1, lost_hi)))
    if lost_hi == num_units:
        if lost_lo < head - groups.last:
            raise CheckFreeError(
                f"the lost units [{lost_lo}, {num_units}) reach before the {groups.last} last "
                "blocks whose swapped partners CheckFree+ trains, so their partners are lost too"
            )
        return EdgeRebuild(head, tuple((u, u - groups.last) for u in range(lost_lo, head)))
    raise CheckFreeError(f"lost units [{lost_lo}, {lost_hi}) include neither edge")
