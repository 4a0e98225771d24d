"""Hugging Face decoder-only LMs, unmodified, split along their own modules: the units
compute exactly what the model's forward does, and the job trains through a kill."""

from __future__ import annotations

import asyncio
import io
import pathlib
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from elastiq.cli.chaos_spec import ChaosSpec
from elastiq.cli.local_run import run_local_async
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.config import JobConfig
from elastiq.hf import build

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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "stages", "fault"),
    [("llama", 2, "kill-before-snapshot"), ("gpt2", 1, "kill-worker")],
)
def test_a_hugging_face_model_trains_through_a_killed_worker(
    family: str, stages: int, fault: str, tmp_path: pathlib.Path
) -> None:
    job = JobConfig(
        job=f"hf-{family}",
        steps=30,
        global_batch=16,
        micro_batch=2,
        seq_len=32,
        pipeline_stages=stages,
        zero=1,
        model_entry="elastiq.hf:build",
        model_args={"family": family, "config": FAMILIES[family]},
    )
    local = LocalRunConfig(
        workers=4, run_dir=str(tmp_path), chaos=[ChaosSpec(fault, rank=1, step=12)]
    )
    summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
    assert summary.succeeded, summary
    assert [r.lost_steps for r in summary.recoveries] == [0]
    assert summary.final_loss < summary.first_loss - 0.5
