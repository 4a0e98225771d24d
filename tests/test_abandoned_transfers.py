"""A superseded step drops its posted receives; gloo must not be left spinning.

Real gloo groups in one process (tests/threaded.py). Gloo keeps only a weak pointer
to a receive's buffer, which the receive's work object owns; data that arrives after
the work is gone is never read, and the group's device thread spins on the readable
socket. That took one PP4xDP2 rank's core share after a failure in 7 of 12 bench runs
(issue 18)."""

from __future__ import annotations

import datetime
import os
import threading
import time

import torch
import torch.distributed as dist

from elastiq.agent.runtime.comm import Group
from tests.threaded import run_ranks


def _gloo_loop_cpu_s() -> float:
    """CPU seconds used so far by this process's gloo device threads."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as fh:
                stat = fh.read()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("gloo"):
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def test_a_dropped_receive_whose_data_arrives_later_leaves_no_thread_spinning() -> None:
    store = dist.HashStore()
    posted = threading.Event()

    def rank_main(rank: int) -> None:
        pg = dist.ProcessGroupGloo(
            dist.PrefixStore("g1/", store), rank, 2, datetime.timedelta(seconds=30)
        )
        group = Group(pg, rank, 2, 1, 30.0, lambda: False)
        if rank == 0:
            # the receive a pipeline step posts up front, dropped when the step is
            # superseded before it needed the data
            group.irecv(torch.empty(1 << 16), 1, 7)
            posted.set()
        else:
            assert posted.wait(30)
            group.send(torch.ones(1 << 16), 0, 7)  # the peer had not heard yet

    run_ranks(2, rank_main, timeout_s=60)
    time.sleep(0.2)  # the data reaches rank 0's socket
    before = _gloo_loop_cpu_s()
    time.sleep(1.0)
    spent = _gloo_loop_cpu_s() - before
    assert spent < 0.2, f"gloo device threads used {spent:.2f} s of CPU in 1 s while idle"
