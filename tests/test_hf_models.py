"""Hugging Face decoder-only LMs, unmodified, split along their own modules: the units
compute exactly what the model's forward does, and the job trains through a kill."""

from __future__ import annotations

import asyncio
import io
import json
import pathlib
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from elastiq.agent.runtime.data.open_dataset import open_dataset
from elastiq.cli.chaos_spec import ChaosSpec
from elastiq.cli.local_run import run_local_async
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.cli.main import main
from elastiq.config import JobConfig
from elastiq.hf import build, config_of
from elastiq.lr import lr_at
from elastiq.model_api import token_cross_entropy
from tests.cluster import step_losses

FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 64,
    },
    "gpt2": {
        "n_embd": 32,
        "n_layer": 4,
        "n_head": 4,
        "vocab_size": 256,
        "n_positions": 64,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_units_compute_what_the_models_own_forward_computes(family: str) -> None:
    torch.manual_seed(0)
    units = build({"family": family, "config": FAMILIES[family]}).units
    assert len(units) == FAMILIES[family].get("num_hidden_layers", 4) + 2
    torch.manual_seed(0)  # the same weights, built by transformers alone
    config = AutoConfig.for_model(family, **FAMILIES[family])
    config.tie_word_embeddings = False
    reference = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    ids = torch.randint(0, 256, (2, 24))
    h = ids
    with torch.no_grad():
        for unit in units:
            h = unit.eval()(h)
        logits = reference(ids).logits
    assert torch.equal(h, logits)


# GPT-2's units are checked against its own forward and its export against
# from_pretrained (both fast, below); what a kill exercises is the same code for both
# families, so the suite runs Llama's pipeline case and the rest run with --extended
@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "stages", "fault"),
    [
        ("llama", 2, "kill-before-snapshot"),
        pytest.param("llama", 1, "kill-worker", marks=pytest.mark.extended),
        pytest.param("gpt2", 2, "kill-before-snapshot", marks=pytest.mark.extended),
        pytest.param("gpt2", 1, "kill-worker", marks=pytest.mark.extended),
    ],
    ids=["llama-pp2xdp2", "llama-dp", "gpt2-pp2xdp2", "gpt2-dp"],
)
def test_a_hugging_face_model_trains_through_a_killed_worker_as_without_it(
    family: str, stages: int, fault: str, tmp_path: pathlib.Path
) -> None:
    """4 workers (PP2xDP2 or DP, ZeRO-1), one killed at step 12: no step is lost and
    every step's loss is within 1e-4 of the run without the kill."""

    def run(name: str, chaos: list[ChaosSpec]) -> dict[int, float]:
        job = JobConfig(
            job=f"hf-{family}-{name}",
            steps=30,
            global_batch=16,
            micro_batch=2,
            seq_len=32,
            pipeline_stages=stages,
            zero=1,
            model_entry="elastiq.hf:build",
            model_args={"family": family, "config": FAMILIES[family]},
            step_log=str(tmp_path / name / "steps"),
        )
        local = LocalRunConfig(workers=4, run_dir=str(tmp_path / name), chaos=chaos)
        summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
        assert summary.succeeded, summary
        assert [r.lost_steps for r in summary.recoveries] == ([0] if chaos else [])
        assert summary.final_loss < summary.first_loss - 0.5
        return step_losses(str(tmp_path / name / "steps"))

    clean = run("clean", [])
    killed = run("killed", [ChaosSpec(fault, rank=1, step=12)])
    assert sorted(killed) == sorted(clean) == list(range(1, 31))
    worst = max(abs(killed[s] - clean[s]) for s in clean)
    assert worst <= 1e-4, worst


@pytest.mark.slow
def test_a_checkpoint_exports_to_what_from_pretrained_loads(tmp_path: pathlib.Path) -> None:
    """Trained under PP2 (so no worker holds the whole model), checkpointed under the
    model's own parameter names, exported with `elastiq ckpt convert --format hf`: the
    loaded model computes what the trained units compute."""
    args = {"family": "llama", "config": FAMILIES["llama"]}
    job = JobConfig(
        job="hf-export",
        steps=10,
        global_batch=8,
        micro_batch=2,
        seq_len=32,
        pipeline_stages=2,
        model_entry="elastiq.hf:build",
        model_args=args,
        checkpoint_url=str(tmp_path / "ckpt"),
        checkpoint_every=5,
        final_params=str(tmp_path / "final.pt"),
    )
    summary = asyncio.run(
        run_local_async(job, LocalRunConfig(workers=2, run_dir=str(tmp_path)), out=io.StringIO())
    )
    assert summary.succeeded, summary
    out = tmp_path / "hf"
    assert main(["ckpt", "convert", str(tmp_path / "ckpt"), str(out), "--format", "hf"]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert "model.layers.0.self_attn.q_proj.weight" in dict(loaded.named_parameters())
    torch.manual_seed(0)
    units = build(args).units  # the same modules, given the trained parameters
    flat = torch.load(tmp_path / "final.pt", weights_only=True)["params"]
    at = 0
    for unit in units:
        for p in unit.parameters():
            p.data.copy_(flat[at : at + p.numel()].view_as(p))
            at += p.numel()
    assert at == flat.numel()
    ids = torch.randint(0, 256, (2, 24))
    h = ids
    with torch.no_grad():
        for unit in units:
            h = unit.eval()(h)
        logits = loaded(ids).logits
    assert torch.equal(h, logits)


@pytest.mark.slow
def test_a_plain_pytorch_run_is_imported_and_resumed_at_another_layout(
    tmp_path: pathlib.Path,
) -> None:
    """A user's own loop trains a Hugging Face Llama for 10 steps with torch.optim.AdamW
    and saves its model and optimizer with torch.save; imported, it resumes under elastiq
    on 2 pipeline stages and continues with the loss the original loop has."""
    args = {"family": "llama", "config": FAMILIES["llama"]}
    job = JobConfig(
        job="hf-resume",
        steps=20,
        global_batch=8,
        micro_batch=2,
        seq_len=32,
        pipeline_stages=2,
        model_entry="elastiq.hf:build",
        model_args=args,
        checkpoint_url=str(tmp_path / "ckpt"),
        resume=True,
        step_log=str(tmp_path / "steps"),
    )
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config_of(args), attn_implementation="sdpa")
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=job.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=job.weight_decay,
    )
    order = open_dataset(job, None)
    theirs = {}
    for step in range(1, job.steps + 1):
        tokens = order.samples((step - 1) * job.global_batch, job.global_batch)
        logits = model(tokens[:, :-1]).logits
        loss = token_cross_entropy(logits, tokens[:, 1:]).sum() / job.global_batch
        theirs[step] = float(loss.detach())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), job.grad_clip)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, peak=job.lr, warmup=job.warmup_steps, total=job.steps)
        opt.step()
        if step == 10:
            torch.save(
                {"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "run.pt"
            )
    argv = ["ckpt", "convert", str(tmp_path / "run.pt"), str(tmp_path / "ckpt"), "--from"]
    argv += ["torch-run", "--step", "10", "--model", "elastiq.hf:build"]
    argv += ["--model-arg", f"family={args['family']}", "--model-arg"]
    argv += ["config=" + json.dumps(args["config"])]
    assert main(argv) == 0
    summary = asyncio.run(
        run_local_async(job, LocalRunConfig(workers=2, run_dir=str(tmp_path)), out=io.StringIO())
    )
    assert summary.succeeded, summary
    ours = step_losses(str(tmp_path / "steps"))
    assert sorted(ours) == list(range(11, 21)), "resumed after step 10"
    worst = max(abs(ours[s] - theirs[s]) for s in ours)
    assert worst <= 1e-4, [(s, ours[s], theirs[s]) for s in sorted(ours)]
