"""The trained parameters at the end of a job, written once by rank 0.

Where it sits: the worker calls `write_final_params` after its last step when the job
config names `final_params`. The first replica of every later stage sends rank 0 its
stage's flat parameters; rank 0 writes the whole model in global order, with the step,
through fsspec (any URL). Point-to-point tag: `elastiq.agent.runtime.tags.FINAL_PARAMS`.
"""

from __future__ import annotations

import io
import logging

import torch

from elastiq import fs
from elastiq.agent.runtime import tags
from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.plan_view import PlanView
from elastiq.agent.runtime.trainer import TrainState

log = logging.getLogger(__name__)


def write_final_params(
    view: PlanView, group: Group, state: TrainState, unit_numel: list[int], url: str
) -> None:
    if view.replica == 0 and view.stage > 0:
        group.send(state.flat.data, view.pipeline.stage_ranks[0][0], tags.FINAL_PARAMS)
        return
    if view.rank != 0:
        return
    pieces = [state.flat.data.clone()]
    for st in view.layout.stages[1:]:
        lo, hi = st.units
        piece = torch.empty(sum(unit_numel[lo:hi]))
        group.recv(piece, st.ranks[0], tags.FINAL_PARAMS)
        pieces.append(piece)
    buffer = io.BytesIO()
    torch.save({"step": state.step, "params": torch.cat(pieces)}, buffer)
    fs.write_bytes(url, buffer.getvalue())
    log.info("wrote the final parameters to %s", url)
