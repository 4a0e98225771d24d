"""The README's path for a Hugging Face model, as a user runs it: text -> `elastiq data
tokenize` -> `elastiq run` on the token file with a worker killed -> `elastiq ckpt
convert --format hf` -> `from_pretrained`."""

from __future__ import annotations

import asyncio
import io
import pathlib
import sysconfig

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM

from elastiq.cli.chaos_spec import ChaosSpec
from elastiq.cli.local_run import run_local_async
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.cli.main import main
from elastiq.config import JobConfig

pytestmark = pytest.mark.slow


def test_tokenize_train_through_a_kill_and_export_for_from_pretrained(
    tmp_path: pathlib.Path,
) -> None:
    corpus = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("json/*.py"))
    assert corpus
    (tmp_path / "text").mkdir()
    for path in corpus:
        (tmp_path / "text" / f"{path.stem}.txt").write_text(path.read_text())
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["[UNK]", "<|endoftext|>"])
    tokenizer.train([str(p) for p in sorted((tmp_path / "text").iterdir())], trainer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    tokens = tmp_path / "tokens.bin"
    argv = ["data", "tokenize", str(tmp_path / "text"), "--tokenizer"]
    assert main([*argv, str(tmp_path / "tokenizer.json"), "--out", str(tokens)]) == 0

    llama = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 64,
    }
    job = JobConfig(
        job="readme-flow",
        steps=30,
        global_batch=16,
        micro_batch=2,
        seq_len=32,
        pipeline_stages=2,
        zero=1,
        model_entry="elastiq.hf:build",
        model_args={"family": "llama", "config": llama},
        data=str(tokens),
        data_format="uint16",
        checkpoint_url=str(tmp_path / "ckpt"),
        checkpoint_every=10,
    )
    local = LocalRunConfig(
        workers=4, run_dir=str(tmp_path / "run"), chaos=[ChaosSpec("kill-worker", rank=2, step=15)]
    )
    summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
    assert summary.succeeded, summary
    assert [r.lost_steps for r in summary.recoveries] == [0]

    out = tmp_path / "hf"
    assert main(["ckpt", "convert", str(tmp_path / "ckpt"), str(out), "--format", "hf"]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([tokenizer.encode("import json\n").ids])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 512) and torch.isfinite(logits).all()
