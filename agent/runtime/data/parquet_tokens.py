"""Parquet and Arrow datasets of token ids (what Hugging Face `datasets` writes after
tokenizing: `to_parquet`, or the `.arrow` stream files of `save_to_disk`): one row per
document, a list column of ids (`input_ids` by default).

The rows' ids are read in file order and concatenated into one token stream, which
`SampleOrder` cuts into samples like any other source; a row is found by binary search
over the cumulative row lengths, so any sample is read by row without scanning. The
column is decoded once at open and kept as one flat array (Parquet pages are compressed,
so they cannot be memory-mapped): memory is 4 bytes a token. Opening checks the column
exists, holds integer lists, and every id is below the model's vocabulary.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from elastiq import fs

log = logging.getLogger(__name__)


class ParquetTokens:
    def __init__(self, url: str, column: str, vocab: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        started = time.monotonic()
        files = fs.expand(url, (".parquet", ".arrow")) or fs.expand(url)
        if not files:
            raise ValueError(f"no Parquet or Arrow files at {url!r}")
        chunks: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        for path in files:
            with fs.open_read(path) as fh:
                if path.endswith(".arrow"):
                    table = pa.ipc.open_stream(fh).read_all()
                else:
                    table = pq.read_table(fh, columns=None)
            if column not in table.column_names:
                raise ValueError(
                    f"{path} has no column {column!r} (columns: {table.column_names}); set "
                    "data_column to the one holding the token ids"
                )
            col = table.column(column).combine_chunks()
            if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or not (
                pa.types.is_integer(col.type.value_type)
            ):
                raise ValueError(f"{path}: column {column!r} is {col.type}, not a list of ints")
            values = col.flatten().to_numpy(zero_copy_only=False)
            if values.size and (int(values.min()) < 0 or int(values.max()) >= vocab):
                bad = int(values.max()) if int(values.max()) >= vocab else int(values.min())
                raise ValueError(
                    f"{path}: column {column!r} holds token id {bad}, outside the model's "
                    f"vocabulary of {vocab} entries"
                )
            chunks.append(values.astype(np.uint32))
            lengths.append(np.diff(col.offsets.to_numpy()))
        self.tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint32)
        self.row_starts = np.concatenate([[0], np.cumsum(np.concatenate(lengths))])
        self.num_tokens = int(self.tokens.size)
        self.description = (
            f"{len(self.row_starts) - 1} rows, {self.num_tokens} tokens of column {column!r} "
            f"in {len(files)} Parquet file(s) at {url}"
        )
        log.info("%s (read in %.2fs)", self.description, time.monotonic() - started)

    def row_of(self, token: int) -> int:
        """The row that holds global token `token`."""
        return int(np.searchsorted(self.row_starts, token, side="right")) - 1

    def read(self, start: int, length: int) -> torch.Tensor:
        return torch.from_numpy(self.tokens[start : start + length].astype(np.int64))
