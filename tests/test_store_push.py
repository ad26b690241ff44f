"""Push subscription storage in the SQLite store (PS-7, PS-8, PS-19, PS-24)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from jmappushd.store import PushDelivery, PushQuotaExceeded, PushSubscription, SQLiteStore

DIGEST = bytes(range(32))


def subscription(sub_id: str, user_id: str, credential: str, **changes: object
                 ) -> PushSubscription:
    base = PushSubscription(
        id=sub_id, user_id=user_id, credential_id=credential, device_client_id="dev",
        url=f"https://push.example/{sub_id}-endpoint", keys_p256dh="P", keys_auth="A",
        verification_code="code-" + sub_id, verified=False, client_verification_code=None,
        expires=1000.0, types=("Email",), vapid_key_id="k1", created=10.0)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(tmp_path / "db.sqlite"), reactor)
    await opened.open()
    yield opened
    await opened.close()


@pytest_twisted.ensureDeferred
async def test_round_trip_and_credential_scope(store: SQLiteStore) -> None:
    """PS-7: subscriptions are listed per credential; every field survives a round trip."""
    alice = await store.add_user("alice", "h")
    s1 = subscription("S1", alice.id, "password:" + alice.id, types=None)
    s2 = subscription("S2", alice.id, "token:T", types=("Email", "Mailbox"))
    await store.create_push_subscription(s1, 10)
    await store.create_push_subscription(s2, 10)
    assert await store.push_subscriptions_for("password:" + alice.id) == [s1]
    assert await store.push_subscriptions_for("token:T") == [s2]
    assert await store.push_subscriptions_for("token:other") == []
    assert await store.all_push_subscriptions() == [s1, s2]
    assert await store.push_subscription_ids() == {"S1", "S2"}


@pytest_twisted.ensureDeferred
async def test_quota_counts_every_credential_of_the_user(store: SQLiteStore) -> None:
    """PS-19: the per-user cap counts subscriptions of all the user's credentials."""
    alice = await store.add_user("alice", "h")
    bob = await store.add_user("bob", "h")
    await store.create_push_subscription(subscription("S1", alice.id, "token:A"), 2)
    await store.create_push_subscription(subscription("S2", alice.id, "token:B"), 2)
    with pytest.raises(PushQuotaExceeded) as info:
        await store.create_push_subscription(subscription("S3", alice.id, "token:C"), 2)
    assert info.value.limit == 2
    await store.create_push_subscription(subscription("S4", bob.id, "token:D"), 2)
    assert await store.push_subscription_ids() == {"S1", "S2", "S4"}


@pytest_twisted.ensureDeferred
async def test_update_and_delivery_state(store: SQLiteStore) -> None:
    """Verification, expiry, types and the pending notification state persist."""
    alice = await store.add_user("alice", "h")
    await store.create_push_subscription(subscription("S1", alice.id, "token:A"), 10)
    assert await store.update_push_subscription("S1", {
        "verified": True, "client_verification_code": "c", "expires": 2000.0,
        "types": None, "last_sent_seq": 7})
    delivery = PushDelivery({"a1": {"Email": "s9"}}, 2, 55.5, 40.0, 8)
    assert await store.save_push_delivery("S1", delivery)
    [loaded] = await store.all_push_subscriptions()
    assert loaded.verified and loaded.client_verification_code == "c"
    assert loaded.expires == 2000.0 and loaded.types is None
    assert loaded.delivery == delivery
    assert not await store.update_push_subscription("nope", {"expires": 1.0})
    assert not await store.save_push_delivery("nope", delivery)
    with pytest.raises(ValueError):
        await store.update_push_subscription("S1", {"url": "https://evil.example/"})


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


@pytest_twisted.ensureDeferred
async def test_delete_other_keys(store: SQLiteStore) -> None:
    """PS-24, VAPID-13: rotating the key destroys subscriptions tied to other keys."""
    alice = await store.add_user("alice", "h")
    await store.create_push_subscription(subscription("S1", alice.id, "t:A"), 10)
    await store.create_push_subscription(
        subscription("S2", alice.id, "t:A", vapid_key_id="k2"), 10)
    assert await store.delete_push_subscriptions_except_keys(["k2"]) == ["S1"]
    assert await store.push_subscription_ids() == {"S2"}


@pytest_twisted.ensureDeferred
async def test_removing_the_user_or_token_deletes_subscriptions(store: SQLiteStore) -> None:
    """PS-7: revoking the creating token or removing the user destroys its subscriptions."""
    alice = await store.add_user("alice", "h")
    token = await store.create_token("alice", DIGEST)
    await store.create_push_subscription(subscription("S1", alice.id, "token:" + token.id), 10)
    await store.create_push_subscription(subscription("S2", alice.id, "password:x"), 10)
    await store.revoke_token(token.id)
    assert await store.push_subscription_ids() == {"S2"}
    await store.remove_user("alice")
    assert await store.push_subscription_ids() == set()
