"""The data order is a pure function of (seed, global sample index)."""

from __future__ import annotations

import pathlib

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from elastiq.agent.runtime.data.byte_corpus import ByteCorpus, load_corpus
from elastiq.agent.runtime.data.parquet_tokens import ParquetTokens
from elastiq.agent.runtime.data.sample_order import SampleOrder
from elastiq.agent.runtime.data.token_file import TokenFile


def test_each_epoch_visits_every_chunk_exactly_once() -> None:
    corpus = torch.arange(10 * 9, dtype=torch.uint8)  # 10 chunks of seq_len+1 = 9
    order = SampleOrder(ByteCorpus(corpus), seq_len=8, seed=3)
    firsts = [int(order.samples(g, 1)[0, 0]) // 9 for g in range(20)]
    assert sorted(firsts[:10]) == list(range(10)) and sorted(firsts[10:]) == list(range(10))
    assert firsts[:10] != firsts[10:], "each epoch has its own permutation"


def test_samples_do_not_depend_on_how_they_are_requested() -> None:
    corpus = torch.randint(0, 256, (5000,), dtype=torch.uint8)
    order = SampleOrder(ByteCorpus(corpus), seq_len=16, seed=1)
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


def _token_file(path: str, tokens: np.ndarray) -> str:
    tokens.tofile(path)
    return path


def test_a_token_file_is_cut_into_samples_like_any_corpus(tmp_path: pathlib.Path) -> None:
    ids = np.arange(10 * 9, dtype=np.uint16) + 300  # ids above a byte: a real vocabulary
    local = TokenFile(_token_file(str(tmp_path / "t.bin"), ids), "uint16", vocab=1000)
    order = SampleOrder(local, seq_len=8, seed=3, global_batch=4)
    as_bytes = SampleOrder(ByteCorpus(torch.arange(90, dtype=torch.uint8)), seq_len=8, seed=3)
    # the same chunk order as any other source of the same length, shifted by 300
    assert torch.equal(order.samples(5, 7), as_bytes.samples(5, 7) + 300)


def test_a_remote_token_file_reads_the_same_samples_by_byte_range(tmp_path: pathlib.Path) -> None:
    ids = np.random.default_rng(0).integers(0, 50_000, 4_000, dtype=np.uint32)
    path = _token_file(str(tmp_path / "t.bin"), ids)
    fsspec.filesystem("memory").pipe("/tokens/t.bin", ids.tobytes())
    local = SampleOrder(TokenFile(path, "uint32", 50_000), seq_len=31, seed=1)
    remote = SampleOrder(TokenFile("memory:///tokens/t.bin", "uint32", 50_000), seq_len=31, seed=1)
    assert torch.equal(local.samples(10, 20), remote.samples(10, 20))


def test_a_token_file_of_the_wrong_dtype_or_vocabulary_is_refused(tmp_path: pathlib.Path) -> None:
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="3 bytes, not a whole number of uint16 tokens"):
        TokenFile(str(odd), "uint16", vocab=256)
    big = _token_file(str(tmp_path / "big.bin"), np.array([1, 2, 70_000], dtype=np.uint32))
    with pytest.raises(ValueError, match=r"token id 70000.*vocabulary has 256 entries"):
        TokenFile(big, "uint32", vocab=256)


def test_a_dataset_smaller_than_one_global_batch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"holds 3 samples .* fewer than one global batch of 4"):
        SampleOrder(
            ByteCorpus(torch.zeros(27, dtype=torch.uint8)), seq_len=8, seed=0, global_batch=4
        )


def _parquet(path: str, rows: list[list[int]], column: str = "input_ids") -> str:
    pq.write_table(pa.table({column: rows, "text": [str(r) for r in rows]}), path)
    return path


def test_parquet_rows_are_one_token_stream_read_by_row(tmp_path: pathlib.Path) -> None:
    rows = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [10, 11]]
    (tmp_path / "ds").mkdir()
    _parquet(str(tmp_path / "ds" / "part-0.parquet"), rows[:3])
    _parquet(str(tmp_path / "ds" / "part-1.parquet"), rows[3:])
    source = ParquetTokens(str(tmp_path / "ds"), "input_ids", vocab=32)
    assert source.num_tokens == 11
    assert source.read(0, 11).tolist() == list(range(1, 12))
    assert [source.row_of(t) for t in (0, 2, 3, 4, 8, 9, 10)] == [0, 0, 1, 3, 3, 4, 4]
    order = SampleOrder(source, seq_len=2, seed=0, global_batch=3)
    assert order.num_chunks == 3
    fsspec.filesystem("memory").pipe(
        "/pq/one.parquet", (tmp_path / "ds" / "part-1.parquet").read_bytes()
    )
    remote = ParquetTokens("memory:///pq/one.parquet", "input_ids", vocab=32)
    assert remote.read(0, 7).tolist() == [5, 6, 7, 8, 9, 10, 11]


def test_a_parquet_dataset_without_token_rows_is_refused(tmp_path: pathlib.Path) -> None:
    path = _parquet(str(tmp_path / "a.parquet"), [[1, 2], [3]])
    with pytest.raises(ValueError, match=r"no column 'ids' \(columns: \['input_ids', 'text'\]\)"):
        ParquetTokens(path, "ids", vocab=32)
    with pytest.raises(ValueError, match="column 'text' is string, not a list of ints"):
        ParquetTokens(path, "text", vocab=32)
    with pytest.raises(ValueError, match="token id 3, outside the model's vocabulary of 3"):
        ParquetTokens(path, "input_ids", vocab=3)


def test_arrow_stream_files_as_datasets_saves_them_read_the_same(tmp_path: pathlib.Path) -> None:
    table = pa.table({"input_ids": [[1, 2, 3], [4, 5]], "attention_mask": [[1, 1, 1], [1, 1]]})
    path = str(tmp_path / "data-00000-of-00001.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    source = ParquetTokens(str(tmp_path), "input_ids", vocab=32)
    assert source.read(0, 5).tolist() == [1, 2, 3, 4, 5]
