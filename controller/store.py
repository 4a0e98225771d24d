"""The `Store` contract the controller keeps the job's state behind.

Sits below the controller service and above the two backends (embedded, etcd).
Semantics follow etcd v3, so a test suite written against this contract holds
for both: every write bumps a global revision; compare-and-set compares a key's
mod revision (0 = "must not exist"); leases expire after their TTL unless
refreshed and take their keys with them; prefix watches deliver puts and deletes
in revision order.

Errors: `StoreUnavailable` is retryable (the backend is down or timed out);
`StoreError` otherwise is permanent for that call.
"""

from __future__ import annotations

import abc
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal


class StoreError(Exception):
    """A store call failed permanently (bad argument, unknown lease)."""


class StoreUnavailable(StoreError):
    """The backend could not be reached in time; retry after a delay."""

    def __init__(self, message: str, retry_after_s: float = 0.5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes
    revision: int


class Store(abc.ABC):
    """Async key-value store with revisions, leases and prefix watches."""

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        """All keys under `prefix`, sorted by key."""

    @abc.abstractmethod
    async def read_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under `prefix` (sorted) and the store's revision at that read: a
        watch from revision + 1 then misses nothing that happened after it."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write unconditionally; returns the new revision."""

    @abc.abstractmethod
    async def compare_and_set(
        self, key: str, value: bytes, expected_revision: int, lease: int = 0
    ) -> bool:
        """Write only if the key's mod revision equals `expected_revision` (0: absent)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete; returns whether the key existed."""

    @abc.abstractmethod
    async def grant_lease(self, ttl_s: float) -> int:
        """A new lease id that expires `ttl_s` after its last refresh."""

    @abc.abstractmethod
    async def refresh_lease(self, lease: int) -> bool:
        """Extend a lease; False if it has already expired or never existed."""

    @abc.abstractmethod
    async def revoke_lease(self, lease: int) -> None:
        """Expire a lease now, deleting its keys."""

    @abc.abstractmethod
    def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Events for keys under `prefix`: from `start_revision` (inclusive) if given,
        so a caller that read or wrote at revision r misses nothing by watching from
        r + 1; else from when the watch is registered. Stop by closing the iterator."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def open_store(url: str) -> Store:
    """Open a store from a URL.

    - ``embedded`` or ``embedded://``: in-process, not persisted.
    - ``embedded:///path/to/state.json``: in-process, persisted to that file.
    - ``etcd://host:port``: an etcd v3 server.
    """
    parsed = urllib.parse.urlparse(url)
    scheme = parsed.scheme or parsed.path
    if scheme == "embedded":
        from elastiq.controller.store_memory import MemoryStore

        path = parsed.path if parsed.scheme else ""
        return MemoryStore(path=path or None)
    if scheme == "etcd":
        from elastiq.controller.store_etcd import EtcdStore

        if not parsed.hostname or not parsed.port:
            raise ValueError(f"store URL {url!r} needs a host and port: etcd://127.0.0.1:2379")
        return EtcdStore(parsed.hostname, parsed.port)
    raise ValueError(
        f"unknown store URL {url!r}: use 'embedded', 'embedded:///path/state.json' "
        "or 'etcd://host:port'"
    )
