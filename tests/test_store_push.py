"""Push subscriptions in the SQLite file (PS-8); the shared behaviour (PS-7, PS-19,
PS-24) is in tests/test_store_conformance_push.py."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from jmappushd.store import SQLiteStore
from tests.store_backends import subscription


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(tmp_path / "db.sqlite"), reactor)
    await opened.open()
    yield opened
    await opened.close()


@pytest_twisted.ensureDeferred
async def test_delete_erases_url_from_the_file(store: SQLiteStore, tmp_path: Path) -> None:
    """PS-8: a destroyed subscription's URL and keys are gone from the file after a checkpoint."""
    alice = await store.add_user("alice", "h")
    sub = subscription("S1", alice.id, "token:A", keys_p256dh="BSECRETPOINTxyz",
                       keys_auth="SECRETAUTHxyz")
    await store.create_push_subscription(sub, 10)
    assert await store.delete_push_subscription("S1")
    assert not await store.delete_push_subscription("S1")
    with sqlite3.connect(tmp_path / "db.sqlite") as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for name in os.listdir(tmp_path):
        data = (tmp_path / name).read_bytes()
        for secret in (sub.url, "BSECRETPOINTxyz", "SECRETAUTHxyz"):
            assert secret.encode() not in data, (name, secret)
