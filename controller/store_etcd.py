"""The etcd v3 `Store` backend, through aetcd (the only module that imports it).

Used by deployments and by tests against a real `etcd`. CAS is an etcd
transaction comparing the key's mod revision; leases are etcd leases (whole
seconds, rounded up: etcd's own minimum applies); watches are etcd prefix watches.
Every call has a timeout; connection failures surface as `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import aetcd.exceptions

from elastiq.controller.store import KeyValue, Store, StoreError, StoreUnavailable, WatchEvent

_RETRYABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
    asyncio.TimeoutError,
)


#: gRPC's reconnect back-off for the etcd channel. Its default grows from 1 s by 1.6x
#: up to 120 s, so after an outage of a few seconds the channel could stay down for
#: seconds after etcd was back: longer than a lease TTL, and a leader whose refresh
#: waited on it lost the lead to a standby whose channel happened to retry first
#: (tests/test_store_outage.py, about 1 run in 5). Capped at 0.5 s, both reconnect
#: within a fraction of a TTL.
#: (Not grpc.min_reconnect_backoff_ms: gRPC also takes it as the deadline of one
#: connection attempt, and at 100 ms attempts on a loaded machine timed out.)
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 500,
}


class EtcdStore(Store):
    def __init__(self, host: str, port: int, timeout_s: float = 5.0) -> None:
        self._address = f"{host}:{port}"
        self._timeout_s = timeout_s
        self._client = aetcd.Client(
            host=host, port=port, timeout=math.ceil(timeout_s), options=dict(_CHANNEL_OPTIONS)
        )

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, self._timeout_s)
        except _RETRYABLE as exc:
            raise StoreUnavailable(f"etcd at {self._address}: {what} failed: {exc!r}") from exc
        except aetcd.exceptions.ClientError as exc:
            raise StoreError(f"etcd at {self._address}: {what} failed: {exc!r}") from exc

    @staticmethod
    def _kv(kv: Any) -> KeyValue:
        return KeyValue(kv.key.decode(), bytes(kv.value), int(kv.mod_revision), int(kv.lease))

    async def get(self, key: str) -> KeyValue | None:
        result = await self._call(f"get {key}", self._client.get(key.encode()))
        return None if result is None else self._kv(result)

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        result = await self._call(f"get_prefix {prefix}", self._client.get_prefix(prefix.encode()))
        return sorted((self._kv(kv) for kv in result), key=lambda kv: kv.key)

    async def read_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        result = await self._call(f"read_prefix {prefix}", self._client.get_prefix(prefix.encode()))
        kvs = sorted((self._kv(kv) for kv in result), key=lambda kv: kv.key)
        return kvs, int(result.header.revision)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        result = await self._call(
            f"put {key}", self._client.put(key.encode(), value, lease or None)
        )
        return int(result.header.revision)

    async def compare_and_set(
        self, key: str, value: bytes, expected_revision: int, lease: int = 0
    ) -> bool:
        txn = self._client.transactions
        ok, _ = await self._call(
            f"compare_and_set {key}",
            self._client.transaction(
                compare=[txn.mod(key.encode()) == expected_revision],
                success=[txn.put(key.encode(), value, lease or None)],
                failure=[],
            ),
        )
        return bool(ok)

    async def delete(self, key: str) -> bool:
        result = await self._call(f"delete {key}", self._client.delete(key.encode()))
        return bool(result and result.deleted)

    async def grant_lease(self, ttl_s: float) -> int:
        if ttl_s <= 0:
            raise StoreError(f"lease TTL must be positive, got {ttl_s}")
        lease = await self._call("grant_lease", self._client.lease(math.ceil(ttl_s)))
        return int(lease.id)

    async def refresh_lease(self, lease: int) -> bool:
        reply = await self._call(f"refresh_lease {lease}", self._client.refresh_lease(lease))
        return reply is not None and int(reply.TTL) > 0

    async def revoke_lease(self, lease: int) -> None:
        try:
            await self._call(f"revoke_lease {lease}", self._client.revoke_lease(lease))
        except StoreError as exc:
            if "not found" not in str(exc):
                raise

    async def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        watch = await self._call(
            f"watch {prefix}",
            self._client.watch_prefix(prefix.encode(), start_revision=start_revision or None),
        )
        try:
            async for event in watch:
                kind: Any = "put" if event.kind == "PUT" else "delete"
                yield WatchEvent(
                    kind, event.kv.key.decode(), bytes(event.kv.value), int(event.kv.mod_revision)
                )
        except _RETRYABLE as exc:
            raise StoreUnavailable(f"etcd watch on {prefix} broke: {exc!r}") from exc
        finally:
            try:
                await asyncio.wait_for(watch.cancel(), 2.0)
            except Exception:  # the stream is already gone; nothing left to cancel
                pass

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._client.close(), 2.0)
        except Exception:  # closing a broken channel must not mask the caller's error
            pass
