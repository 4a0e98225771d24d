"""One contract suite for every Store backend: embedded and a real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from elastiq.controller.store import Store, StoreError, WatchEvent, open_store


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture(params=["embedded", "etcd"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "embedded":
        yield "embedded"
    else:
        yield request.getfixturevalue("etcd_server").url


def with_store(url: str, body: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = open_store(url)
        try:
            return await body(store)
        finally:
            await store.close()

    return run(main())


def test_compare_and_set_rejects_a_stale_revision(store_url: str) -> None:
    async def body(store: Store) -> None:
        assert await store.compare_and_set("/t/gen", b"1", 0)
        assert not await store.compare_and_set("/t/gen", b"x", 0), "create-only must fail"
        kv = await store.get("/t/gen")
        assert kv is not None and kv.value == b"1"
        assert await store.compare_and_set("/t/gen", b"2", kv.mod_revision)
        assert not await store.compare_and_set("/t/gen", b"3", kv.mod_revision)
        now = await store.get("/t/gen")
        assert now is not None and now.value == b"2"

    with_store(store_url, body)


def test_prefix_reads_are_sorted_and_scoped(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.put("/t/a/2", b"two")
        await store.put("/t/a/1", b"one")
        await store.put("/t/b/1", b"other")
        kvs = await store.get_prefix("/t/a/")
        assert [kv.key for kv in kvs] == ["/t/a/1", "/t/a/2"]
        assert await store.delete("/t/a/1")
        assert not await store.delete("/t/a/1")
        assert [kv.key for kv in await store.get_prefix("/t/a/")] == ["/t/a/2"]

    with_store(store_url, body)


def test_lease_expiry_removes_its_keys(store_url: str) -> None:
    async def body(store: Store) -> None:
        lease = await store.grant_lease(1.0)
        await store.put("/t/node/a", b"alive", lease=lease)
        kept = await store.grant_lease(1.0)
        await store.put("/t/node/b", b"alive", lease=kept)
        # refresh one lease past the other's expiry
        for _ in range(8):
            await asyncio.sleep(0.5)
            assert await store.refresh_lease(kept)
            if await store.get("/t/node/a") is None:
                break
        assert await store.get("/t/node/a") is None
        assert await store.get("/t/node/b") is not None
        assert not await store.refresh_lease(lease)
        await store.revoke_lease(kept)
        assert await store.get("/t/node/b") is None

    with_store(store_url, body)


def test_put_with_an_unknown_lease_changes_nothing(store_url: str) -> None:
    async def body(store: Store) -> None:
        with pytest.raises(StoreError):
            await store.put("/t/x", b"v", lease=987654321)
        assert await store.get("/t/x") is None

    with_store(store_url, body)


def test_watch_delivers_puts_and_deletes_in_order(store_url: str) -> None:
    async def body(store: Store) -> None:
        first = await store.put("/t/w/a", b"1")
        await store.put("/t/other", b"ignored")
        await store.put("/t/w/a", b"2")
        await store.delete("/t/w/a")
        # watching from the first write's revision misses nothing, with no race
        seen: list[WatchEvent] = []
        agen = store.watch_prefix("/t/w/", start_revision=first)
        async for event in agen:
            seen.append(event)
            if len(seen) == 3:
                break
        await agen.aclose()  # type: ignore[attr-defined]
        assert [(e.kind, e.key, e.value) for e in seen] == [
            ("put", "/t/w/a", b"1"),
            ("put", "/t/w/a", b"2"),
            ("delete", "/t/w/a", b""),
        ]
        assert seen[0].revision == first < seen[1].revision < seen[2].revision

    with_store(store_url, body)


def test_watch_sees_writes_made_after_it_started(store_url: str) -> None:
    async def body(store: Store) -> None:
        now = await store.put("/t/live/mark", b"0")
        agen = store.watch_prefix("/t/live/", start_revision=now + 1)
        task = asyncio.ensure_future(agen.__anext__())
        await store.put("/t/live/x", b"later")
        event = await asyncio.wait_for(task, 10)
        assert (event.kind, event.key, event.value) == ("put", "/t/live/x", b"later")
        await agen.aclose()  # type: ignore[attr-defined]

    with_store(store_url, body)


def test_embedded_store_persists_unleased_keys(tmp_path: Any) -> None:
    url = f"embedded://{tmp_path}/state.json"

    async def write(store: Store) -> None:
        await store.put("/t/plan", b"p1")
        lease = await store.grant_lease(30)
        await store.put("/t/node", b"n", lease=lease)

    async def read(store: Store) -> tuple[Any, Any]:
        return await store.get("/t/plan"), await store.get("/t/node")

    with_store(url, write)
    plan, node = with_store(url, read)
    assert plan is not None and plan.value == b"p1"
    assert node is None


def test_embedded_store_file_is_fsynced_before_and_after_it_replaces_the_old_one(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = f"{tmp_path}/state.json"

    async def write(store: Store) -> None:
        await store.put("/t/plan", b"p1")

    with_store(f"embedded://{path}", write)
    # the new file's bytes, then the directory entry that the rename changed
    assert synced[:2] == [f"{path}.tmp", str(tmp_path)]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_unknown_store_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="etcd://host:port"):
        open_store("redis://x")
