"""`elastiq data tokenize`: text files and a tokenizers file -> a token file the job
trains on; streamed, published only when complete, refused with why on bad input."""

from __future__ import annotations

import pathlib

import fsspec
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from elastiq.cli import data
from elastiq.cli.main import main

TEXT = "the quick brown fox jumps over the lazy dog\n" * 50 + "a second line of text\n" * 30


def _tokenizer(path: pathlib.Path, vocab: int = 120) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["[UNK]", "<|endoftext|>"])
    tok.train_from_iterator([TEXT], trainer)
    tok.save(str(path))
    return tok


def test_text_files_become_the_ids_the_tokenizer_gives(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = _tokenizer(tmp_path / "tok.json")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "b.txt").write_text("a second line of text\n")
    (tmp_path / "text" / "a.txt").write_text(TEXT)
    monkeypatch.setattr(data, "BLOCK_BYTES", 64)  # many blocks: the streaming path
    out = tmp_path / "tokens.bin"
    assert (
        main(
            [
                "data",
                "tokenize",
                str(tmp_path / "text"),
                "--tokenizer",
                str(tmp_path / "tok.json"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    ids = np.fromfile(out, dtype=np.uint16).tolist()
    eos = tok.token_to_id("<|endoftext|>")
    second = tok.encode("a second line of text\n").ids
    expected = [*tok.encode(TEXT).ids, eos, *second, eos]
    assert ids == expected, "files in sorted order, each ended by end-of-text"
    assert not (tmp_path / "tokens.bin.partial").exists()


def test_it_writes_to_any_fsspec_url(tmp_path: pathlib.Path) -> None:
    _tokenizer(tmp_path / "tok.json")
    (tmp_path / "a.txt").write_text(TEXT)
    report = data.tokenize_files(
        str(tmp_path / "a.txt"), str(tmp_path / "tok.json"), "memory:///out/t.bin", dtype="uint32"
    )
    raw = fsspec.filesystem("memory").cat("/out/t.bin")
    assert report.tokens == len(raw) // 4 > 0


def test_bad_input_is_refused_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    _tokenizer(tmp_path / "tok.json")
    out = tmp_path / "t.bin"
    with pytest.raises(ValueError, match="no text files"):
        data.tokenize_files(str(tmp_path / "none*.txt"), str(tmp_path / "tok.json"), str(out))
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a tokenizers JSON file"):
        data.tokenize_files(str(tmp_path / "a.txt"), str(tmp_path / "bad.json"), str(out))
    assert not out.exists()
