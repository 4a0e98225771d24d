"""The user's own model, named by entry point: built the same on every worker, checked
on one tiny batch before training, and trained through failures like the built-in one."""

from __future__ import annotations

import asyncio
import io
import pathlib
import time

import pytest
import torch

from elastiq.agent.runtime.data.open_dataset import open_dataset
from elastiq.agent.runtime.models.source import model_source
from elastiq.agent.runtime.trainer import TrainState
from elastiq.cli.chaos_spec import ChaosSpec
from elastiq.cli.local_run import run_local_async
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.config import JobConfig
from elastiq.lr import lr_at
from elastiq.model_api import build_model


def toy(entry: str = "tests.toy_units:build", **changes: object) -> JobConfig:
    job = JobConfig(
        job="toy",
        steps=40,
        global_batch=16,
        micro_batch=2,
        seq_len=32,
        model_entry=entry,
        model_args={"dim": 32, "blocks": 4},
    )
    for name, value in changes.items():
        setattr(job, name, value)
    return job


def test_an_entry_point_model_reports_its_units_and_trains_a_stage_of_them() -> None:
    source = model_source(toy())
    block = 32 * 2 + (32 * 64 + 64) + (64 * 32 + 32)
    assert source.unit_numel == (256 * 32, block, block, block, block, 2 * 32 + 32 * 256)
    assert source.boundary_shape == (32, 32)
    stage = TrainState(toy(), units=(2, 5))
    assert stage.flat.numel == 3 * block and stage.base == 256 * 32 + block
    other = TrainState(toy(), units=(2, 5))
    assert other.flat.data.equal(stage.flat.data), "every worker builds the same weights"
    assert other.flat.data.data_ptr() != stage.flat.data.data_ptr()


def test_a_plain_module_is_one_unit() -> None:
    assert model_source(toy("tests.toy_units:build_plain")).num_units == 1


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("tests.no_such_module:build", "cannot import 'tests.no_such_module'"),
        ("tests.toy_units:nope", "has no 'nope'"),
        ("tests.toy_units:build_nothing", "returned a int; return an elastiq.UnitModel"),
        ("tests.toy_units:build_unchained", "unit 1 (Head) fails on unit 0 output of shape"),
    ],
)
def test_a_model_that_does_not_build_or_chain_is_refused_with_why(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        model_source(toy(entry))


def test_an_entry_point_is_checked_for_its_form_at_submission() -> None:
    with pytest.raises(ValueError, match=r"not of the form pkg\.module:build"):
        toy("toy_units.build")


@pytest.mark.slow
@pytest.mark.parametrize("layout", [pytest.param("dp", marks=pytest.mark.extended), "pp2xdp2"])
def test_a_user_model_survives_a_killed_worker_without_losing_a_step(
    layout: str, tmp_path: pathlib.Path
) -> None:
    job = toy(pipeline_stages=2, zero=1) if layout == "pp2xdp2" else toy()
    fault = "kill-before-snapshot" if layout == "pp2xdp2" else "kill-worker"
    local = LocalRunConfig(
        workers=4, run_dir=str(tmp_path), chaos=[ChaosSpec(fault, rank=1, step=15)]
    )
    summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
    assert summary.succeeded, summary
    assert [r.lost_steps for r in summary.recoveries] == [0]
    assert summary.final_loss < summary.first_loss - 0.5


@pytest.mark.slow
def test_a_model_that_does_not_import_fails_the_job_at_once(tmp_path: pathlib.Path) -> None:
    started = time.monotonic()
    local = LocalRunConfig(workers=2, run_dir=str(tmp_path))
    job = toy("tests.no_such_module:build")
    summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
    assert summary.phase == "Failed" and "cannot import 'tests.no_such_module'" in summary.error
    assert time.monotonic() - started < 60


HF_LLAMA = {
    "family": "llama",
    "config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 64,
    },
}
HF_GPT2 = {
    "family": "gpt2",
    "config": {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 256, "n_positions": 64},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("entry", "args"),
    [
        ("tests.toy_units:build", {"dim": 32, "blocks": 4}),
        ("elastiq.hf:build", HF_LLAMA),
        pytest.param("elastiq.hf:build", HF_GPT2, marks=pytest.mark.extended),
    ],
    ids=["toy", "hf-llama", "hf-gpt2"],
)
def test_one_worker_trains_a_user_model_like_a_plain_pytorch_loop(
    entry: str, args: dict[str, object], tmp_path: pathlib.Path
) -> None:
    """The same model, batches and torch.optim.AdamW settings: elastiq on one worker ends
    within 1e-5 of the plain loop after 20 steps (the runtime's flat AdamW, global-batch
    loss scaling, clipping and schedule are the textbook ones)."""
    job = toy(entry, steps=20, final_params=str(tmp_path / "final.pt"), weight_decay=0.1)
    job.model_args = args
    local = LocalRunConfig(workers=1, run_dir=str(tmp_path))
    summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
    assert summary.succeeded, summary
    ours = torch.load(tmp_path / "final.pt", weights_only=True)["params"]

    model = build_model(job.model_entry, job.model_args, job.seed)
    net = torch.nn.Sequential(*model.units)
    order = open_dataset(job, None)
    opt = torch.optim.AdamW(
        net.parameters(), lr=job.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=job.weight_decay
    )
    batch = job.global_batch
    for step in range(1, job.steps + 1):
        tokens = order.samples((step - 1) * batch, batch)
        loss = model.loss(net(tokens[:, :-1]), tokens[:, 1:]).sum() / batch
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), job.grad_clip)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, peak=job.lr, warmup=job.warmup_steps, total=job.steps)
        opt.step()
    theirs = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert ours.shape == theirs.shape
    diff = float((ours - theirs).abs().max())
    assert diff <= 1e-5, diff


@pytest.mark.slow
def test_a_model_whose_boundaries_differ_is_refused_for_pipelines_at_once(
    tmp_path: pathlib.Path,
) -> None:
    assert model_source(toy("tests.toy_units:build_narrowing")).boundary_shape is None
    job = toy("tests.toy_units:build_narrowing", pipeline_stages=2, steps=5)
    local = LocalRunConfig(workers=2, run_dir=str(tmp_path))
    summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
    assert summary.phase == "Failed" and "one shape at every boundary" in summary.error


@pytest.mark.slow
def test_a_plain_module_asked_for_pipeline_stages_fails_with_how_to_split_it(
    tmp_path: pathlib.Path,
) -> None:
    job = toy("tests.toy_units:build_plain", pipeline_stages=2, steps=5)
    local = LocalRunConfig(workers=2, run_dir=str(tmp_path))
    summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
    assert summary.phase == "Failed"
    assert "fewer than pipeline_stages=2" in summary.error
    assert "split the model into more units" in summary.error, summary.error
