"""The data order is a pure function of (seed, global sample index)."""

from __future__ import annotations

import fsspec
import torch

from elastiq.agent.runtime.data.byte_corpus import SampleOrder, load_corpus


def test_each_epoch_visits_every_chunk_exactly_once() -> None:
    corpus = torch.arange(10 * 9, dtype=torch.uint8)  # 10 chunks of seq_len+1 = 9
    order = SampleOrder(corpus, seq_len=8, seed=3)
    firsts = [int(order.samples(g, 1)[0, 0]) // 9 for g in range(20)]
    assert sorted(firsts[:10]) == list(range(10)) and sorted(firsts[10:]) == list(range(10))
    assert firsts[:10] != firsts[10:], "each epoch has its own permutation"


def test_samples_do_not_depend_on_how_they_are_requested() -> None:
    corpus = torch.randint(0, 256, (5000,), dtype=torch.uint8)
    order = SampleOrder(corpus, seq_len=16, seed=1)
    whole = order.samples(40, 8)
    pieces = torch.cat([order.samples(40 + i, 1) for i in range(8)])
    assert torch.equal(whole, pieces)


def test_corpus_loads_from_any_fsspec_url() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus/b.txt", b"world " * 100)
    fs.pipe("/corpus/a.txt", b"hello " * 100)
    data = load_corpus("memory:///corpus", max_bytes=700)
    assert data.numel() == 700
    assert bytes(data[:6].tolist()) == b"hello ", "files are read in sorted order"


def test_default_corpus_is_the_standard_library() -> None:
    data = load_corpus("", max_bytes=50_000)
    assert data.numel() == 50_000
    assert b"def " in bytes(data.tolist())
