"""Run one function per rank in threads: real gloo groups in one process."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_ranks(world: int, body: Callable[[int], None], timeout_s: float = 180.0) -> None:
    """Call body(rank) for every rank concurrently; raise the first error any raised."""
    errors: list[BaseException] = []

    def guarded(rank: int) -> None:
        try:
            body(rank)
        except BaseException as exc:  # re-raised in the caller below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"ranks still running after {timeout_s}s")
    if errors:
        raise errors[0]
