"""The job's dataset, by `data_format`: the sample order over a byte corpus or a token
file. Raises ValueError with what is wrong in the data and what to change."""

from __future__ import annotations

from elastiq.agent.runtime.data.byte_corpus import ByteCorpus, load_corpus
from elastiq.agent.runtime.data.sample_order import SampleOrder, TokenSource
from elastiq.agent.runtime.data.token_file import TokenFile
from elastiq.config import JobConfig


def open_dataset(cfg: JobConfig) -> SampleOrder:
    source: TokenSource
    if cfg.data_format == "text":
        source = ByteCorpus(load_corpus(cfg.data, cfg.data_max_bytes))
    else:
        source = TokenFile(cfg.data, cfg.data_format, cfg.model.vocab)
    return SampleOrder(source, cfg.seq_len, cfg.seed, cfg.global_batch)
