"""Checkpoints in the running job: real processes, real files. A job resumed from a
checkpoint at another worker count and layout trains like one that never stopped,
and a loss that no live replica or buddy covers is restored from the checkpoint."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from elastiq.checkpoint import catalog
from elastiq.checkpoint.manifest import step_dir
from elastiq.proto import elastiq_pb2 as pb
from tests.cluster import ReferenceRuns, run

pytestmark = pytest.mark.slow

PP2 = {"pipeline-stages": 2, "zero": 1, "steps": 40}


def _diff(a_path: str, b_path: str) -> float:
    a, b = torch.load(a_path, weights_only=False), torch.load(b_path, weights_only=False)
    assert a["step"] == b["step"] == 40
    return float((a["params"] - b["params"]).abs().max())


def test_a_resumed_job_at_another_layout_trains_like_one_that_never_stopped(
    tmp_path: object, failure_free: ReferenceRuns
) -> None:
    """Saved by 4 workers as PP2 x DP2 with ZeRO-1; resumed from step 20 by 3 workers
    as DP3 with ZeRO-0 (a universal restore, no conversion)."""
    base = str(tmp_path)
    reference = failure_free(PP2)
    clean, resumed = reference.params, os.path.join(base, "resumed.pt")
    root = os.path.join(base, "ckpt")
    shutil.copytree(reference.checkpoints, root)  # the reference is shared: change a copy
    assert catalog.committed(root) == [20, 30, 40]
    for step in (30, 40):  # as if the job had stopped after step 20
        shutil.rmtree(os.path.join(root, step_dir(step)))
    os.makedirs(os.path.join(base, "b"))
    job = {"steps": 40, "zero": 0, "checkpoint-url": root, "resume": True, "final-params": resumed}
    end, _ = run(os.path.join(base, "b"), job, None, workers=3)
    assert end.phase == pb.JOB_SUCCEEDED, end
    assert end.plan.state_source == "checkpoint" and end.plan.checkpoint_step == 20
    assert len(end.plan.stages) == 1 and end.plan.world_size == 3
    diff = _diff(clean, resumed)
    assert diff <= 1e-5, f"max abs parameter difference {diff}"


def _stage0_and_a_buddy(first: pb.StatusResponse) -> list[int]:
    """Every rank of stage 0 and the buddy of the first: one interval of stage 0 is
    then held by nobody alive."""
    stage0 = list(first.plan.stages[0].ranks)
    return [*stage0, first.plan.buddy[stage0[0]]]


def test_a_loss_no_buddy_covers_is_restored_from_the_checkpoint(
    tmp_path: object, failure_free: ReferenceRuns
) -> None:
    base = str(tmp_path)
    root = os.path.join(base, "ckpt")
    clean, failed = failure_free(PP2).params, os.path.join(base, "failed.pt")
    job = {**PP2, "checkpoint-url": root, "checkpoint-every": 10, "final-params": failed}
    end, _ = run(base, job, _stage0_and_a_buddy)
    assert end.phase == pb.JOB_SUCCEEDED, end
    assert end.plan.world_size == 1 and end.plan.state_source == "checkpoint"
    assert end.plan.checkpoint_step in (10, 20)
    assert end.recoveries and end.recoveries[-1].lost_steps >= 1
    diff = _diff(clean, failed)
    assert diff <= 1e-5, f"max abs parameter difference {diff}"
