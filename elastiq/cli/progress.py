"""What `elastiq run` shows while the job runs: a progress bar on a terminal (plain
lines otherwise) with step, loss, tokens/s, generation and members, and each
membership event as it happens."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from elastiq.proto import elastiq_pb2 as pb

#: the events a user sees as they happen (the rest are in `elastiq status`)
SHOWN_EVENTS = frozenset(
    {
        "plan",
        "worker_exited",
        "worker_hung",
        "node_lost",
        "recovered",
        "chaos",
        "failed",
        "finished",
        "takeover",
        "worker_failed",
        "waiting",
        "worker_restarting",
        "start_failed",
        "worker_refused",
    }
)


class ProgressView:
    """A progress bar on a terminal, plain lines otherwise; events as they happen."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.tty = out.isatty()
        self.seen_events = 0
        self.last_line = 0.0
        self.last_text = ""
        self.bar_shown = False

    def update(self, status: pb.StatusResponse) -> None:
        new = list(status.events)[self.seen_events :]
        self.seen_events = len(status.events)
        for ev in new:
            if ev.kind in SHOWN_EVENTS:
                self._clear_bar()
                stamp = time.strftime("%H:%M:%S", time.localtime(ev.wall_time))
                print(f"[{stamp}] gen {ev.generation}: {ev.kind}: {ev.message}", file=self.out)
        members = sum(1 for m in status.members if m.rank >= 0)
        done = min(status.step, self.total)
        width = 30
        filled = int(width * done / max(1, self.total))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] step {done}/{self.total} "
            f"loss {status.loss:.3f} tok/s {status.tokens_per_s:,.0f} "
            f"gen {status.generation} workers {members}"
        )
        if status.waiting_for and status.phase == pb.JOB_PENDING:
            # before the first generation the bar would say nothing: say what it waits for
            line = f"starting: {status.waiting_for}"[:200]
        if self.tty:
            print("\r" + line, end="", file=self.out, flush=True)
            self.bar_shown = True
        elif line != self.last_text and (
            time.monotonic() - self.last_line > 5.0 or done == self.total
        ):
            print(line, file=self.out, flush=True)
            self.last_line = time.monotonic()
            self.last_text = line

    def note(self, text: str) -> None:
        """A line of the runner's own (not a controller event), stamped like one."""
        self._clear_bar()
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.out, flush=True)

    def _clear_bar(self) -> None:
        if self.tty and self.bar_shown:
            print("\r" + " " * 210 + "\r", end="", file=self.out)
            self.bar_shown = False

    def finish(self) -> None:
        if self.tty and self.bar_shown:
            print(file=self.out)


def progress_bar(label: str) -> Callable[[int, int], None]:
    """A progress bar on stderr for long offline work: call it with (done, total)."""
    start = time.monotonic()

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(1, total)
        sys.stderr.write(
            f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"{time.monotonic() - start:.1f}s"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show
