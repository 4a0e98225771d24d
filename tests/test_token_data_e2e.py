"""Training on a token file (uint16 ids, a vocabulary larger than bytes) end to end, and
a job whose data is wrong failing at once with the reason instead of waiting forever."""

from __future__ import annotations

import asyncio
import io
import pathlib
import time

import numpy as np
import pytest

from elastiq.cli.chaos_spec import ChaosSpec
from elastiq.cli.local_run import run_local_async
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.config import JobConfig, ModelConfig

pytestmark = pytest.mark.slow


def _job(data: str, **changes: object) -> JobConfig:
    job = JobConfig(
        job="tokens-e2e",
        steps=40,
        global_batch=16,
        micro_batch=2,
        seq_len=32,
        data=data,
        data_format="uint16",
        model=ModelConfig(dim=32, n_layers=2, n_heads=2, vocab=1024),
    )
    for name, value in changes.items():
        setattr(job, name, value)
    return job


def test_a_token_file_trains_and_a_killed_worker_costs_no_step(tmp_path: pathlib.Path) -> None:
    # a learnable stream: runs of 100 ids counting up by one (each run starting 7 further
    # on than the last), modulo 1000
    ids = (np.arange(200_000) * 1 + np.repeat(np.arange(2_000) * 7, 100)) % 1000
    path = tmp_path / "tokens.bin"
    ids.astype(np.uint16).tofile(path)
    local = LocalRunConfig(
        workers=4, run_dir=str(tmp_path), chaos=[ChaosSpec("kill-worker", rank=2, step=15)]
    )
    summary = asyncio.run(run_local_async(_job(str(path)), local, out=io.StringIO()))
    assert summary.succeeded, summary
    assert [r.lost_steps for r in summary.recoveries] == [0]
    assert summary.final_loss < summary.first_loss - 1.0, "it learned from the token ids"


def test_a_token_file_of_the_wrong_size_fails_the_job_at_once_with_the_reason(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "odd.bin"
    path.write_bytes(b"\x00" * 20_001)
    started = time.monotonic()
    local = LocalRunConfig(workers=2, run_dir=str(tmp_path))
    summary = asyncio.run(run_local_async(_job(str(path)), local, out=io.StringIO()))
    assert summary.phase == "Failed"
    assert "could not start" in summary.error and "not a whole number of uint16" in summary.error
    assert time.monotonic() - started < 60, "a bad dataset must not leave the job waiting"


def test_a_parquet_dataset_of_token_rows_trains(tmp_path: pathlib.Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [list(range(start, start + 150)) for start in range(0, 800, 7)]
    pq.write_table(pa.table({"input_ids": rows}), tmp_path / "ds.parquet")
    job = _job(str(tmp_path / "ds.parquet"), data_format="parquet", steps=20)
    local = LocalRunConfig(workers=2, run_dir=str(tmp_path))
    summary = asyncio.run(run_local_async(job, local, out=io.StringIO()))
    assert summary.succeeded, summary
    assert summary.final_loss < summary.first_loss - 0.5
