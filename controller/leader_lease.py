"""The job's leader key: won by one controller, kept alive, reclaimed after an outage.

Where it sits: controller/server.py holds one `LeaderLease` per controller process.
The key (/elastiq/<job>/leader, the leader's address) lives on a lease of
`lease_ttl_s`; the leader refreshes it every third of that. Decisions (docs/design.md,
"Store outages"):

- A standby waits on a watch of the key, not a poll, and competes the moment it is
  deleted: it takes over within one TTL of the leader's last refresh.
- While the store is unreachable, the leader keeps leading: no other controller can
  be elected through an unreachable store, training needs no store, and membership
  changes simply wait (the job controller retries them). The store is the fence: a
  plan is written with compare-and-set on its revision, so a controller that lost
  the lead can never write one.
- When the store is back and the lease expired meanwhile, the leader reclaims the key
  if it is free and nothing changed the plan since (`still_ours`); otherwise another
  controller took over and this one steps down.

Every wait has a timeout; every store error is logged once per outage, with its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from elastiq.controller.store import Store, StoreError

log = logging.getLogger(__name__)


class LeaderLease:
    def __init__(self, store: Store, key: str, address: str, ttl_s: float) -> None:
        self.store, self.key, self.address, self.ttl_s = store, key, address, ttl_s
        self.lease = 0
        self.current_leader = ""
        """The address in the key when another controller holds it."""
        self._outage_since = 0.0

    def _store_failed(self, exc: Exception, doing: str) -> None:
        if not self._outage_since:
            self._outage_since = time.monotonic()
            log.warning("store unavailable while %s (%r); riding it out", doing, exc)

    def _store_ok(self) -> None:
        if self._outage_since:
            log.info("store back after %.1fs", time.monotonic() - self._outage_since)
            self._outage_since = 0.0

    async def _try_win(self) -> bool:
        lease = await self.store.grant_lease(self.ttl_s)
        if await self.store.compare_and_set(self.key, self.address.encode(), 0, lease=lease):
            self.lease = lease
            return True
        await self.store.revoke_lease(lease)
        return False

    async def win(self) -> None:
        """Return once this controller holds the key; rides out store outages."""
        while True:
            try:
                if await self._try_win():
                    self._store_ok()
                    self.current_leader = ""
                    return
                current = await self.store.get(self.key)
                self._store_ok()
                if current is None:
                    continue
                self.current_leader = current.value.decode(errors="replace")
                await self._until_released(current.mod_revision)
            except StoreError as exc:
                self._store_failed(exc, "competing for the lead")
                await asyncio.sleep(self.ttl_s / 3)

    async def _until_released(self, revision: int) -> None:
        """Until the key is deleted (its lease expired, or the leader left), at most
        one TTL: then the caller reads the key again."""
        events = self.store.watch_prefix(self.key, revision + 1)
        try:
            async with asyncio.timeout(self.ttl_s):
                async for event in events:
                    if event.key == self.key and event.kind == "delete":
                        return
        except TimeoutError:
            return
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def keep(self, still_ours: Callable[[], Awaitable[bool]]) -> None:
        """Refresh the lease every third of a TTL; return only when the lead is lost
        to another controller (or could not be reclaimed). Store errors are retried."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                if await self.store.refresh_lease(self.lease):
                    self._store_ok()
                    continue
                self._store_ok()
                log.warning("the leader lease expired (an outage or a stall longer than its TTL)")
                if await still_ours() and await self._try_win():
                    log.info("reclaimed the leader key; still leading, nothing lost")
                    continue
                log.error("another controller leads now; stepping down")
                return
            except StoreError as exc:
                self._store_failed(exc, "keeping the lead")

    async def release(self) -> None:
        if self.lease:
            try:
                await self.store.revoke_lease(self.lease)
            except Exception:  # store already gone; the lease expires on its own
                log.debug("could not revoke the leader lease", exc_info=True)
            self.lease = 0
