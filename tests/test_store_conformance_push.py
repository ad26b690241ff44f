"""Every store backend against IPushStore: round trips, credential scope, the per-user
quota (PS-19), updates, delivery state, deletion and key rotation (PS-7, PS-8, PS-24)."""

from __future__ import annotations

import pytest
import pytest_twisted

from jmappushd.store import IStore, PushDelivery, PushQuotaExceeded
from tests.store_backends import (  # noqa: F401 - fixtures
    DIGEST_1,
    Backend,
    backend_fixture,
    store_fixture,
    subscription,
)


@pytest_twisted.ensureDeferred
async def test_round_trip_and_credential_scope(store: IStore) -> None:
    """PS-7: subscriptions are listed per credential, oldest first; every field survives a
    round trip."""
    alice = await store.add_user("alice", "h")
    s2 = subscription("S2", alice.id, "token:T", types=("Email", "Mailbox"), created=20.0)
    s1 = subscription("S1", alice.id, "password:" + alice.id, types=None)
    s3 = subscription("S3", alice.id, "token:T", created=15.0, verified=True,
                      client_verification_code="c", keys_p256dh=None, keys_auth=None,
                      delivery=PushDelivery({"A": {"Email": "s"}}, 1, 5.0, 4.0, 3))
    for sub in (s2, s1, s3):
        assert await store.create_push_subscription(sub, 10) == sub
    assert await store.push_subscriptions_for("password:" + alice.id) == [s1]
    assert await store.push_subscriptions_for("token:T") == [s3, s2]
    assert await store.push_subscriptions_for("token:other") == []
    assert await store.all_push_subscriptions() == [s1, s3, s2]
    assert await store.push_subscription_ids() == {"S1", "S2", "S3"}


@pytest_twisted.ensureDeferred
async def test_quota_counts_every_credential_of_the_user(store: IStore) -> None:
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
    await store.delete_push_subscription("S1")
    await store.create_push_subscription(subscription("S3", alice.id, "token:C"), 2)


@pytest_twisted.ensureDeferred
async def test_subscription_needs_a_user(store: IStore) -> None:
    """A subscription for an unknown user is refused (the user owns it)."""
    with pytest.raises(Exception):  # noqa: B017 - the type is the backend's own
        await store.create_push_subscription(subscription("S1", "unotauser", "token:A"), 2)
    assert await store.push_subscription_ids() == set()


@pytest_twisted.ensureDeferred
async def test_update_and_delivery_state(store: IStore) -> None:
    """Verification, expiry, types and the pending notification state persist; unknown ids
    answer False; immutable fields are refused."""
    alice = await store.add_user("alice", "h")
    await store.create_push_subscription(subscription("S1", alice.id, "token:A"), 10)
    assert await store.update_push_subscription("S1", {
        "verified": True, "client_verification_code": "c", "expires": 2000.0,
        "types": None, "last_sent_seq": 7})
    [loaded] = await store.all_push_subscriptions()
    assert loaded.delivery.last_sent_seq == 7 and loaded.verified
    delivery = PushDelivery({"a1": {"Email": "s9"}}, 2, 55.5, 40.0, 8)
    assert await store.save_push_delivery("S1", delivery)
    [loaded] = await store.all_push_subscriptions()
    assert loaded.verified and loaded.client_verification_code == "c"
    assert loaded.expires == 2000.0 and loaded.types is None
    assert loaded.delivery == delivery
    assert await store.update_push_subscription("S1", {"types": ["Mailbox"]})
    assert await store.update_push_subscription("S1", {})
    [loaded] = await store.all_push_subscriptions()
    assert loaded.types == ("Mailbox",) and loaded.delivery == delivery
    assert not await store.update_push_subscription("nope", {"expires": 1.0})
    assert not await store.update_push_subscription("nope", {})
    assert not await store.save_push_delivery("nope", delivery)
    with pytest.raises(ValueError):
        await store.update_push_subscription("S1", {"url": "https://evil.example/"})


@pytest_twisted.ensureDeferred
async def test_saved_delivery_is_a_copy(store: IStore) -> None:
    """The pending states saved are the store's own: changing the caller's dict later, or
    a loaded record's, changes nothing stored."""
    alice = await store.add_user("alice", "h")
    await store.create_push_subscription(subscription("S1", alice.id, "token:A"), 10)
    pending = {"A": {"Email": "s1"}}
    await store.save_push_delivery("S1", PushDelivery(pending))
    pending["A"]["Email"] = "later"
    [loaded] = await store.all_push_subscriptions()
    loaded.delivery.pending["A"]["Email"] = "mutated"
    [again] = await store.all_push_subscriptions()
    assert again.delivery.pending == {"A": {"Email": "s1"}}
    await store.save_push_delivery("S1", PushDelivery())
    [cleared] = await store.all_push_subscriptions()
    assert cleared.delivery == PushDelivery()


@pytest_twisted.ensureDeferred
async def test_delete(store: IStore) -> None:
    """Deleting destroys the subscription once; a second delete answers False."""
    alice = await store.add_user("alice", "h")
    await store.create_push_subscription(subscription("S1", alice.id, "token:A"), 10)
    assert await store.delete_push_subscription("S1")
    assert not await store.delete_push_subscription("S1")
    assert await store.all_push_subscriptions() == []


@pytest_twisted.ensureDeferred
async def test_delete_other_keys(store: IStore) -> None:
    """PS-24, VAPID-13: rotating the key destroys subscriptions tied to other keys
    (including none); at least one key must be kept."""
    alice = await store.add_user("alice", "h")
    await store.create_push_subscription(subscription("S1", alice.id, "t:A"), 10)
    await store.create_push_subscription(
        subscription("S2", alice.id, "t:A", vapid_key_id="k2"), 10)
    await store.create_push_subscription(
        subscription("S3", alice.id, "t:A", vapid_key_id="k3"), 10)
    await store.create_push_subscription(
        subscription("S4", alice.id, "t:A", vapid_key_id=""), 10)
    assert sorted(await store.delete_push_subscriptions_except_keys(["k2", "k3"])) == [
        "S1", "S4"]
    assert await store.push_subscription_ids() == {"S2", "S3"}
    assert await store.delete_push_subscriptions_except_keys(["k2"]) == ["S3"]
    assert await store.delete_push_subscriptions_except_keys(["k2"]) == []
    with pytest.raises(ValueError):
        await store.delete_push_subscriptions_except_keys([])
    assert await store.push_subscription_ids() == {"S2"}


@pytest_twisted.ensureDeferred
async def test_removing_the_user_or_token_deletes_subscriptions(store: IStore) -> None:
    """PS-7: revoking the creating token or removing the user destroys its subscriptions."""
    alice = await store.add_user("alice", "h")
    token = await store.create_token("alice", DIGEST_1)
    await store.create_push_subscription(subscription("S1", alice.id, "token:" + token.id), 10)
    await store.create_push_subscription(subscription("S2", alice.id, "password:x"), 10)
    await store.revoke_token(token.id)
    assert await store.push_subscription_ids() == {"S2"}
    await store.remove_user("alice")
    assert await store.push_subscription_ids() == set()


@pytest_twisted.ensureDeferred
async def test_subscriptions_survive_reopen(backend: Backend) -> None:
    """A persistent backend keeps subscriptions and their delivery state across reopen."""
    if not backend.persists:
        pytest.skip(f"the {backend.name} store keeps nothing after close")
    store = backend.make(None)
    await store.open()
    alice = await store.add_user("alice", "h")
    sub = subscription("S1", alice.id, "token:A",
                       delivery=PushDelivery({"A": {"Email": "s"}}, 1, None, None, 4))
    await store.create_push_subscription(sub, 10)
    await store.close()
    store = backend.make(None)
    await store.open()
    try:
        assert await store.all_push_subscriptions() == [sub]
    finally:
        await store.close()
