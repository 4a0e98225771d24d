"""The embedded `Store` backend: in-process, optionally persisted to one JSON file.

The default for `elastiq run`, so a single machine needs no server. Same semantics
as etcd for revisions, CAS, leases and watches. Persistence writes the whole state
atomically (temp file, fsync, rename, fsync of the directory) after each change;
leases are not persisted, so keys bound to a lease are gone after a restart, as if
their TTL had run out.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from elastiq.controller.store import KeyValue, Store, StoreError, WatchEvent


@dataclass(slots=True)
class _Lease:
    ttl_s: float
    deadline: float
    keys: set[str] = field(default_factory=set)


class MemoryStore(Store):
    def __init__(self, path: str | None = None) -> None:
        self._data: dict[str, KeyValue] = {}
        self._revision = 0
        self._leases: dict[int, _Lease] = {}
        self._watchers: list[tuple[str, asyncio.Queue[WatchEvent | None]]] = []
        # recent events, so a watch can start from a revision (as etcd's can)
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=10_000)
        self._path = path
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        if path and os.path.exists(path):
            self._load(path)

    # persistence -------------------------------------------------------------
    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
            self._revision = int(raw["revision"])
            for key, (value, rev) in raw["data"].items():
                self._data[key] = KeyValue(key, base64.b64decode(value), int(rev))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"embedded store file {path} is unreadable: {exc}") from exc

    def _persist(self) -> None:
        if not self._path:
            return
        data = {
            k: (base64.b64encode(kv.value).decode(), kv.mod_revision)
            for k, kv in self._data.items()
            if kv.lease == 0
        }
        tmp = f"{self._path}.tmp"
        # durable before it replaces the old state, and the rename itself durable: a
        # crash leaves either the old file or the new one, never an empty one; 0600,
        # since the state names the job's nodes and plans
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"revision": self._revision, "data": data}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)
        dir_fd = os.open(os.path.dirname(os.path.abspath(self._path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # internals ----------------------------------------------------------------
    def _ensure_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        for lease_id in [lid for lid, lease in self._leases.items() if lease.deadline <= now]:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        for key in sorted(lease.keys):
            kv = self._data.get(key)
            if kv is not None and kv.lease == lease_id:
                self._remove(key)

    def _notify(self, event: WatchEvent) -> None:
        self._history.append(event)
        for prefix, queue in self._watchers:
            if event.key.startswith(prefix):
                queue.put_nowait(event)

    def _write(self, key: str, value: bytes, lease: int) -> int:
        if lease and lease not in self._leases:
            raise StoreError(f"lease {lease} does not exist (expired or revoked)")
        old = self._data.get(key)
        if old is not None and old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        self._revision += 1
        self._data[key] = KeyValue(key, bytes(value), self._revision, lease)
        if lease:
            self._leases[lease].keys.add(key)
        self._notify(WatchEvent("put", key, bytes(value), self._revision))
        self._persist()
        return self._revision

    def _remove(self, key: str) -> bool:
        old = self._data.pop(key, None)
        if old is None:
            return False
        self._revision += 1
        self._notify(WatchEvent("delete", key, b"", self._revision))
        self._persist()
        return True

    # Store API ----------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        self._ensure_reaper()
        self._expire(time.monotonic())
        return self._data.get(key)

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        self._ensure_reaper()
        self._expire(time.monotonic())
        return [self._data[k] for k in sorted(self._data) if k.startswith(prefix)]

    async def read_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self.get_prefix(prefix), self._revision

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._ensure_reaper()
        self._expire(time.monotonic())
        return self._write(key, value, lease)

    async def compare_and_set(
        self, key: str, value: bytes, expected_revision: int, lease: int = 0
    ) -> bool:
        self._ensure_reaper()
        self._expire(time.monotonic())
        current = self._data.get(key)
        actual = current.mod_revision if current is not None else 0
        if actual != expected_revision:
            return False
        self._write(key, value, lease)
        return True

    async def delete(self, key: str) -> bool:
        self._ensure_reaper()
        return self._remove(key)

    async def grant_lease(self, ttl_s: float) -> int:
        if ttl_s <= 0:
            raise StoreError(f"lease TTL must be positive, got {ttl_s}")
        self._ensure_reaper()
        # random, as etcd's are not guessable from the previous one either
        lease_id = secrets.randbits(62) + 1
        while lease_id in self._leases:
            lease_id = secrets.randbits(62) + 1
        self._leases[lease_id] = _Lease(ttl_s, time.monotonic() + ttl_s)
        return lease_id

    async def refresh_lease(self, lease: int) -> bool:
        now = time.monotonic()
        self._expire(now)
        entry = self._leases.get(lease)
        if entry is None:
            return False
        entry.deadline = now + entry.ttl_s
        return True

    async def revoke_lease(self, lease: int) -> None:
        self._drop_lease(lease)

    async def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        self._ensure_reaper()
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        if start_revision:
            if self._history and start_revision < self._history[0].revision:
                raise StoreError(
                    f"revision {start_revision} is older than the kept history "
                    f"(from {self._history[0].revision}); read the current state instead"
                )
            for past in self._history:
                if past.revision >= start_revision and past.key.startswith(prefix):
                    queue.put_nowait(past)
        entry = (prefix, queue)
        self._watchers.append(entry)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            if entry in self._watchers:
                self._watchers.remove(entry)

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for _, queue in self._watchers:
            queue.put_nowait(None)
