"""The first VAPID key on a new store: of daemons starting at once, one key wins for all
(issue 13: two cluster nodes on a new database each made their own and signed with it
until the key watcher noticed)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from jmappushd.store import MemoryStore
from jmappushd.transports.webpush.keys import META_KEY, load_or_create_key
from tests.store_backends import open_memory_store


class BothReadFirst(MemoryStore):
    """Every node's first read finds no key: they all looked before any of them wrote."""

    def get_meta(self, key: str) -> defer.Deferred[str | None]:
        if key == META_KEY:
            return defer.succeed(None)
        return super().get_meta(key)


@pytest_twisted.ensureDeferred
async def test_concurrent_first_starts_share_one_key() -> None:
    store = BothReadFirst()
    store.open()
    first = await load_or_create_key(store)
    second = await load_or_create_key(store)
    assert first.key_id == second.key_id
    assert await MemoryStore.get_meta(store, META_KEY) == first.to_private_string()


@pytest_twisted.ensureDeferred
async def test_a_stored_key_is_loaded() -> None:
    store = open_memory_store()
    made = await load_or_create_key(store)
    assert (await load_or_create_key(store)).key_id == made.key_id
