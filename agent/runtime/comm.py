"""Generation-scoped communicators that can be abandoned.

A gloo collective whose ring neighbour is alive but stalled blocks until its
timeout, and `abort()` does not unblock it (measured: a survivor that was not
next to the dead rank sat 20 s in allreduce). So every operation is issued
asynchronously and waited on by polling, checking between polls whether the
worker has been told that this generation is superseded. A superseded or failed
group is dropped; the next generation builds a fresh one from the rendezvous
store under its own prefix. Nothing here is reused across generations except the
TCP connection to the rendezvous store.
"""

from __future__ import annotations

import collections
import datetime
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Destroying a gloo group waits for the operations queued on it, and an abandoned
# group may have one stuck until its timeout (measured: the main thread sat in
# ~ProcessGroupGloo for 60 s when the last reference went away). So the groups of
# recent generations stay referenced here, each with its sends and receives still in
# flight (Group._in_flight), and are released long after their operations have timed
# out; workers leave with os._exit, skipping the destructors.
_RECENT_GROUPS: collections.deque[tuple[Any, dict[int, Any]]] = collections.deque(maxlen=8)


class Superseded(Exception):
    """A newer generation that drops a member of this one has arrived."""


class CollectiveFailed(Exception):
    """A collective or transfer failed (peer gone) or timed out."""


def _poll(
    done: Callable[[], bool], superseded: Callable[[], bool], deadline: float, what: str
) -> None:
    pause = 0.0
    while not done():
        if superseded():
            raise Superseded(what)
        if time.monotonic() > deadline:
            raise CollectiveFailed(f"{what} timed out")
        time.sleep(pause)
        pause = min(0.001, pause * 2 + 0.00002)


class _Waiter:
    """One daemon thread per group that completes blocking waits in order.

    Starting a thread per receive cost about 3% of a pipeline step (py-spy, PP2).
    A wait abandoned by its caller (superseded, timed out) leaves this thread
    blocked, but the group is then abandoned too: nothing else is queued on it.
    The thread ends when its group is garbage-collected."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[list[Any], threading.Event, list[BaseException]] | None]
        self._jobs = queue.SimpleQueue()
        threading.Thread(target=self._loop, args=(self._jobs,), name=name, daemon=True).start()

    def submit(self, works: list[Any]) -> tuple[threading.Event, list[BaseException]]:
        done, errors = threading.Event(), list[BaseException]()
        self._jobs.put((works, done, errors))
        return done, errors

    def stop(self) -> None:
        self._jobs.put(None)

    @staticmethod
    def _loop(
        jobs: queue.SimpleQueue[tuple[list[Any], threading.Event, list[BaseException]] | None],
    ) -> None:
        while (job := jobs.get()) is not None:
            works, done, errors = job
            try:
                for work in works:
                    work.wait()
            except BaseException as exc:  # handed to the caller
                errors.append(exc)
            finally:
                done.set()


class RendezvousClient:
    """Connections to the rendezvous store the plan names: a new one per generation.

    A group abandoned with operations in flight may still be blocked in a call on
    its store connection (measured: sharing one client made the next generation's
    rendezvous wait out the old group's 60 s timeout). A connection per generation
    keeps an abandoned group from holding up the next one.
    """

    def store(self, address: str, timeout_s: float) -> dist.Store:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"rendezvous address {address!r} is not host:port")
        return dist.TCPStore(
            host,
            int(port),
            is_master=False,
            timeout=datetime.timedelta(seconds=timeout_s),
            wait_for_workers=False,
        )


@dataclass(slots=True)
class WaitTimes:
    """Seconds the calling thread spent blocked on this group, cumulative: what a
    step waited for its neighbours and peers rather than computed (bench/reshard.py
    reads it from the step log, issue 18)."""

    p2p_s: float = 0.0
    """Pipeline sends and receives: the bubble and the transfers together."""
    collective_s: float = 0.0
    """All-reduces, all-gathers, reduce-scatters, broadcasts."""


class Group:
    """One generation's process group with supersede-aware, timed operations."""

    def __init__(
        self,
        pg: Any,  # a gloo Backend; torch types its collectives only on ProcessGroup
        rank: int,
        world: int,
        generation: int,
        timeout_s: float,
        superseded: Callable[[], bool],
    ) -> None:
        self.pg = pg
        self._in_flight: dict[int, Any] = {}
        """Sends and receives started here and not yet waited to completion, by id.
        Gloo holds only a weak pointer to a transfer's buffer, which its work object
        owns: when data arrives for a receive whose work is gone, gloo never reads
        it, and the group's device thread spins on the readable socket for as long
        as the group lives (measured: a full core; one rank of PP4xDP2 in 7 of 12
        runs, from a superseded step's posted receives, which took the wall-clock
        throughput after the change to 0.64-1.00 of linear, mostly below 0.84). A
        superseded step drops its works; the group keeps them, and lets them go when
        they complete."""
        _RECENT_GROUPS.append((pg, self._in_flight))
        self.rank = rank
        self.world = world
        self.generation = generation
        self.timeout_s = timeout_s
        self.superseded = superseded
        self._waiter: _Waiter | None = None
        self.waited = WaitTimes()

    @classmethod
    def build(
        cls,
        store: dist.Store,
        prefix: str,
        rank: int,
        world: int,
        generation: int,
        timeout_s: float,
        rendezvous_timeout_s: float,
        superseded: Callable[[], bool],
    ) -> Group:
        """Rendezvous under `prefix`; abandoned (left to time out in a thread) if superseded."""
        result: list[dist.ProcessGroupGloo] = []
        errors: list[BaseException] = []

        def connect() -> None:
            try:
                result.append(
                    dist.ProcessGroupGloo(
                        dist.PrefixStore(prefix, store),
                        rank,
                        world,
                        datetime.timedelta(seconds=timeout_s),
                    )
                )
            except BaseException as exc:  # surfaced to the caller below
                errors.append(exc)

        thread = threading.Thread(target=connect, name=f"rendezvous-g{generation}", daemon=True)
        thread.start()
        _poll(
            lambda: not thread.is_alive(),
            superseded,
            time.monotonic() + rendezvous_timeout_s,
            f"rendezvous of generation {generation}",
        )
        if errors:
            raise CollectiveFailed(f"rendezvous of generation {generation}: {errors[0]}")
        return cls(result[0], rank, world, generation, timeout_s, superseded)

    def _wait(self, work: dist.Work, what: str) -> None:
        """Wait for a collective; gloo marks those complete from its own threads."""
        t0 = time.perf_counter()
        try:
            _poll(work.is_completed, self.superseded, time.monotonic() + self.timeout_s, what)
            work.wait()
        except (Superseded, CollectiveFailed):
            raise
        except RuntimeError as exc:
            raise CollectiveFailed(f"{what}: {str(exc).splitlines()[0][:200]}") from exc
        finally:
            self.waited.collective_s += time.perf_counter() - t0

    def _wait_in_thread(self, works: list[Any], what: str, p2p: bool = True) -> None:
        """Wait for operations gloo completes only inside wait() (send, recv,
        reduce_scatter: measured, is_completed() stays False). A wait(timeout) that
        expires breaks the pair (measured), so the blocking waits run in the group's
        waiter thread, and the caller gives up on them if the generation is superseded."""
        if not works:
            return
        if self._waiter is None:
            self._waiter = _Waiter(f"waiter-g{self.generation}")
            weakref.finalize(self, self._waiter.stop)
        t0 = time.perf_counter()
        done, errors = self._waiter.submit(works)
        # Event.wait wakes the moment the wait completes (no polling latency on the
        # hot path of pipeline receives); the slices let a superseding plan interrupt
        deadline = time.monotonic() + self.timeout_s
        try:
            while not done.wait(0.02):
                if self.superseded():
                    raise Superseded(what)
                if time.monotonic() > deadline:
                    raise CollectiveFailed(f"{what} timed out")
        finally:
            waited = time.perf_counter() - t0
            if p2p:
                self.waited.p2p_s += waited
            else:
                self.waited.collective_s += waited
        for work in works:  # complete (or failed): gloo no longer needs their buffers
            self._in_flight.pop(id(work), None)
        if errors:
            raise CollectiveFailed(f"{what}: {str(errors[0]).splitlines()[0][:200]}")

    def _issue(self, what: str, start: Callable[[], Any]) -> Any:
        """Start an operation; gloo raises at once when a pair is already closed
        (a peer died since the last operation), which is a failure like any other."""
        try:
            return start()
        except RuntimeError as exc:
            raise CollectiveFailed(f"{what}: {str(exc).splitlines()[0][:200]}") from exc

    def allreduce_sum_(self, tensor: torch.Tensor) -> None:
        self._wait(self._issue("allreduce", lambda: self.pg.allreduce([tensor])), "allreduce")

    def broadcast_(self, tensor: torch.Tensor, src: int) -> None:
        """tensor <- rank src's tensor, on every rank."""
        work = self._issue("broadcast", lambda: self.pg.broadcast(tensor, src))
        self._wait(work, "broadcast")

    def allgather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(tensor) for _ in range(self.world)]
        self._wait(
            self._issue("allgather", lambda: self.pg.allgather([out], [tensor])), "allgather"
        )
        return out

    def reduce_scatter_sum(self, output: torch.Tensor, chunks: list[torch.Tensor]) -> None:
        """output <- sum over ranks of chunks[my rank] (chunks of equal size)."""
        what = "reduce_scatter"
        work = self._issue(what, lambda: self.pg.reduce_scatter([output], [chunks]))
        self._wait_in_thread([work], what, p2p=False)

    def allgather_into(self, outputs: list[torch.Tensor], tensor: torch.Tensor) -> None:
        work = self._issue("allgather", lambda: self.pg.allgather([outputs], [tensor]))
        self._wait(work, "allgather")

    def isend(self, tensor: torch.Tensor, dst: int, tag: int) -> Any:
        """Start a send; complete it with wait_p2p (the tensor must stay untouched)."""
        work = self._issue(f"send to {dst}", lambda: self.pg.send([tensor], dst, tag))
        self._in_flight[id(work)] = work
        return work

    def irecv(self, tensor: torch.Tensor, src: int, tag: int) -> Any:
        """Start a receive; complete it with wait_p2p (the tensor may be written until
        then, and, if the step is abandoned, after)."""
        work = self._issue(f"recv from {src}", lambda: self.pg.recv([tensor], src, tag))
        self._in_flight[id(work)] = work
        return work

    def wait_p2p(self, works: list[Any], what: str) -> None:
        """Complete started sends/receives (abandoned if superseded)."""
        self._wait_in_thread(works, what)

    def send(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:
        self._wait_in_thread([self.isend(tensor, dst, tag)], f"send to {dst}")

    def recv(self, tensor: torch.Tensor, src: int, tag: int = 0) -> None:
        self._wait_in_thread([self.irecv(tensor, src, tag)], f"recv from {src}")


_Incoming = TypeVar("_Incoming")


@dataclass(slots=True)
class PendingTransfer(Generic[_Incoming]):
    """Point-to-point transfers of one step started behind the training loop: the work
    objects to complete, and what to do with each receive once it has landed."""

    step: int
    works: list[Any]
    incoming: list[_Incoming]
