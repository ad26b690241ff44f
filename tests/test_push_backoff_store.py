"""The back-off of Web Push delivery is stored durably (issue 10, defect 3): the SQLite
store keeps ``dropped`` and ``backoff_until``, and an older file gains them in place."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from jmappushd.store import PushDelivery, PushSubscription, SQLiteStore
from jmappushd.store.schema import MIGRATIONS, migrate


def subscription(user_id: str) -> PushSubscription:
    return PushSubscription(
        id="S1", user_id=user_id, credential_id="token:A", device_client_id="dev",
        url="https://push.example/S1", keys_p256dh="P", keys_auth="A",
        verification_code="code", verified=True, client_verification_code=None,
        expires=1000.0, types=None, vapid_key_id="k1", created=10.0)


@pytest_twisted.ensureDeferred
async def test_back_off_round_trips(tmp_path: Path) -> None:
    """Both back-off fields survive a save and a reload, on create and on update."""
    store = SQLiteStore(str(tmp_path / "db.sqlite"), reactor)
    await store.open()
    try:
        alice = await store.add_user("alice", "h")
        created = dataclasses.replace(subscription(alice.id),
                                      delivery=PushDelivery({}, 0, None, 5.0, 3, 2, 77.5))
        await store.create_push_subscription(created, 10)
        [loaded] = await store.all_push_subscriptions()
        assert loaded.delivery == created.delivery
        delivery = PushDelivery({"a1": {"Email": "s9"}}, 1, 55.5, 40.0, 8, 4, 123.25)
        assert await store.save_push_delivery("S1", delivery)
        [loaded] = await store.all_push_subscriptions()
        assert loaded.delivery == delivery
    finally:
        await store.close()


def test_v3_adds_the_columns_and_keeps_the_rows() -> None:
    """A version-2 file upgrades in place: existing subscriptions read as never dropped."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(connection.cursor(), MIGRATIONS[:2]) == (0, 2)
    connection.execute("INSERT INTO users (id, name, password_hash, primary_account_id, created) "
                       "VALUES ('u1', 'alice', 'h', 'a1', 1.0)")
    connection.execute("INSERT INTO push_subscriptions (id, user_id, credential_id, url, "
                       "created) VALUES ('S1', 'u1', 'token:A', 'https://p.example/', 1.0)")
    assert migrate(connection.cursor(), MIGRATIONS[:3]) == (2, 3)
    row = connection.execute(
        "SELECT id, dropped, backoff_until FROM push_subscriptions").fetchone()
    assert row == ("S1", 0, None)
