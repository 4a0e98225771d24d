"""Executes a plan's state moves: each rank sends what it holds and receives what
it lacks, in the model's global element coordinates (see controller/reshard.py).

All sends are started before any receive is waited on, so no order of moves can
deadlock; every send carries the move's index as its tag, so pieces between the
same two ranks cannot be confused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from elastiq.agent.plan_layout import Move
from elastiq.agent.runtime.comm import Group

#: (what, lo, hi, via) -> the tensors that hold those elements, in a fixed order
Source = Callable[[str, int, int, str], list[torch.Tensor]]
#: (what, lo, hi) -> contiguous tensors to receive those elements into
Target = Callable[[str, int, int], list[torch.Tensor]]

PIECES = 4  # tags per move: params use one tensor, moments two


def apply_moves(
    group: Group, moves: Sequence[Move], me: int, source: Source, target: Target
) -> int:
    """Run the moves that involve rank `me`; returns the bytes it received."""
    for m in moves:
        if m.src_rank == me and m.dst_rank == me:
            # a rank that is the buddy of a lost owner and now owns part of that owner's
            # interval copies the piece from its own snapshot (live pieces it holds
            # never appear as moves)
            for src, dst in zip(
                source(m.what, m.lo, m.hi, m.via), target(m.what, m.lo, m.hi), strict=True
            ):
                dst.copy_(src)
    sends = []
    for i, m in enumerate(moves):
        if m.src_rank == me and m.dst_rank != me:
            for k, tensor in enumerate(source(m.what, m.lo, m.hi, m.via)):
                sends.append((tensor, group.isend(tensor, m.dst_rank, i * PIECES + k)))
    received = 0
    for i, m in enumerate(moves):
        if m.dst_rank == me and m.src_rank != me:
            for k, tensor in enumerate(target(m.what, m.lo, m.hi)):
                if not tensor.is_contiguous():
                    raise ValueError(
                        f"receive buffer for {m.what} [{m.lo}, {m.hi}) is not contiguous"
                    )
                group.recv(tensor, m.src_rank, i * PIECES + k)
                received += tensor.numel() * tensor.element_size()
    group.wait_p2p([work for _, work in sends], "state moves")
    return received
