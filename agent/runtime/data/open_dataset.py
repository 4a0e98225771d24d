"""The job's dataset, by `data_format`: the sample order over a byte corpus or a token
file. Raises ValueError with what is wrong in the data and what to change."""

from __future__ import annotations

from elastiq.agent.runtime.data.byte_corpus import ByteCorpus, load_corpus
from elastiq.agent.runtime.data.parquet_tokens import ParquetTokens
from elastiq.agent.runtime.data.sample_order import SampleOrder, TokenSource
from elastiq.agent.runtime.data.token_file import TokenFile
from elastiq.config import JobConfig


def open_dataset(cfg: JobConfig, vocab: int | None) -> SampleOrder:
    """`vocab`: the ids the model accepts (None: unknown, not checked)."""
    source: TokenSource
    limit = vocab if vocab is not None else 1 << 32
    if cfg.data_format == "text":
        if limit < 256:
            raise ValueError(
                f"text is read as bytes (ids 0-255) but the model accepts {limit} ids: "
                "use a token file, or a vocabulary of at least 256"
            )
        source = ByteCorpus(load_corpus(cfg.data, cfg.data_max_bytes))
    elif cfg.data_format == "parquet":
        source = ParquetTokens(cfg.data, cfg.data_column, limit)
    else:
        source = TokenFile(cfg.data, cfg.data_format, limit)
    return SampleOrder(source, cfg.seq_len, cfg.seed, cfg.global_batch)
