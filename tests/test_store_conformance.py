"""Every store backend against the store interfaces: users, tokens, grants, auth
generation, lifecycle and metadata (see tests/store_backends.py for the backends).

The state log, ordering and push subscriptions are in the two sibling modules.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from jmappushd.store import (
    Account,
    AccountInUse,
    IStore,
    NoSuchUser,
    StoreClosed,
    User,
    UserExists,
)
from jmappushd.store.interface import STORE_INTERFACES
from tests.store_backends import (  # noqa: F401 - fixtures
    DIGEST_1,
    DIGEST_2,
    Backend,
    backend_fixture,
    store_fixture,
    subscription,
)

ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,254}$")


@pytest_twisted.ensureDeferred
async def test_provides_every_interface(store: IStore) -> None:
    """Each backend provides every store interface, with matching signatures."""
    for interface in STORE_INTERFACES:
        assert verifyObject(interface, store), interface


@pytest_twisted.ensureDeferred
async def test_use_outside_open_fails(backend: Backend) -> None:
    """Calls before open() or after close() fail with StoreClosed; a second open() fails;
    close() is idempotent."""
    store = backend.make(None)
    with pytest.raises(StoreClosed):
        await store.position()
    await store.open()
    with pytest.raises(RuntimeError):
        await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreClosed):
        await store.record_changes({"A": {"Email": "s1"}})


# -- users, accounts, grants --


@pytest_twisted.ensureDeferred
async def test_add_user_makes_opaque_ids(store: IStore) -> None:
    """API-19: generated user and account ids start with a letter and use the Id alphabet."""
    alice = await store.add_user("alice", "hash")
    assert re.fullmatch(r"a[A-Za-z0-9_-]{23}", alice.primary_account_id)
    assert re.fullmatch(r"u[A-Za-z0-9_-]{23}", alice.id)
    bob = await store.add_user("bob", "hash")
    assert bob.primary_account_id != alice.primary_account_id
    assert await store.get_user("alice") == alice
    assert await store.get_user_by_id(alice.id) == alice
    assert await store.get_user("carol") is None
    assert await store.get_user_by_id("nope") is None


@pytest_twisted.ensureDeferred
async def test_add_user_conflicts(store: IStore) -> None:
    """A taken name raises UserExists; a taken primary account raises AccountInUse; neither
    changes anything."""
    await store.add_user("alice", "hash", "Ashared")
    generation = await store.auth_generation()
    with pytest.raises(UserExists):
        await store.add_user("alice", "other")
    with pytest.raises(AccountInUse):
        await store.add_user("bob", "hash", "Ashared")
    assert await store.get_user("bob") is None
    assert await store.auth_generation() == generation


@pytest_twisted.ensureDeferred
async def test_created_uses_injected_clock(backend: Backend) -> None:
    """User and token creation times come from the injected clock."""
    clock = Clock()
    clock.advance(1234.5)
    store = backend.make(clock)
    await store.open()
    try:
        assert (await store.add_user("alice", "h")).created == 1234.5
        assert (await store.create_token("alice", DIGEST_1)).created == 1234.5
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_list_users_and_passwords(store: IStore) -> None:
    """Users list by name; set_password replaces the hash or raises NoSuchUser."""
    await store.add_user("bob", "b")
    await store.add_user("alice", "a")
    assert [u.name for u in await store.list_users()] == ["alice", "bob"]
    await store.set_password("alice", "new")
    alice = await store.get_user("alice")
    assert alice is not None and alice.password_hash == "new"
    assert "new" not in repr(alice)
    with pytest.raises(NoSuchUser):
        await store.set_password("carol", "x")


@pytest_twisted.ensureDeferred
async def test_grants_and_accounts(store: IStore) -> None:
    """Accounts list the primary (personal, user's name) first, then grants sorted by id."""
    alice = await store.add_user("alice", "h", "Aalice")
    await store.grant("alice", "Zteam")
    await store.grant("alice", "Bshared")
    await store.grant("alice", "Bshared")
    await store.grant("alice", "Aalice")
    assert await store.accounts_for_user(alice.id) == [
        Account("Aalice", "alice", True),
        Account("Bshared", "Bshared", False),
        Account("Zteam", "Zteam", False),
    ]
    assert await store.revoke_grant("alice", "Zteam") is True
    assert await store.revoke_grant("alice", "Zteam") is False
    assert await store.revoke_grant("nobody", "Bshared") is False
    assert [a.id for a in await store.accounts_for_user(alice.id)] == ["Aalice", "Bshared"]
    assert await store.accounts_for_user("unknown") == []
    with pytest.raises(NoSuchUser):
        await store.grant("nobody", "Bshared")


@pytest_twisted.ensureDeferred
async def test_remove_user_cascades(store: IStore) -> None:
    """PS-7: removing a user deletes its tokens, grants and push subscriptions, and only
    those; a new user of the same name starts without them."""
    alice = await store.add_user("alice", "h")
    bob = await store.add_user("bob", "h")
    await store.grant("alice", "Bshared")
    await store.grant("bob", "Bshared")
    await store.create_token("alice", DIGEST_1)
    await store.create_token("bob", DIGEST_2)
    await store.create_push_subscription(subscription("S1", alice.id, "basic:a"), 10)
    await store.create_push_subscription(subscription("S2", bob.id, "basic:b"), 10)
    assert await store.remove_user("alice") is True
    assert await store.remove_user("alice") is False
    assert await store.get_user("alice") is None
    assert await store.get_user_by_id(alice.id) is None
    assert await store.find_token(DIGEST_1) is None
    assert await store.find_token(DIGEST_2) is not None
    assert await store.push_subscription_ids() == {"S2"}
    assert [a.id for a in await store.accounts_for_user(bob.id)][1:] == ["Bshared"]
    again = await store.add_user("alice", "h")
    assert await store.accounts_for_user(again.id) == [
        Account(again.primary_account_id, "alice", True)
    ]
    assert await store.list_tokens("alice") == []


# -- tokens --


@pytest_twisted.ensureDeferred
async def test_tokens(store: IStore) -> None:
    """Tokens are stored by digest, found with their owner, listed oldest first, revoked."""
    alice = await store.add_user("alice", "h")
    first = await store.create_token("alice", DIGEST_1, "laptop")
    second = await store.create_token("alice", DIGEST_2)
    assert ID.match(first.id) and first.id != second.id
    assert (first.user_id, first.label, second.label) == (alice.id, "laptop", "")
    assert await store.find_token(DIGEST_1) == (first, alice)
    assert await store.find_token(bytes(32)) is None
    assert sorted(t.id for t in await store.list_tokens("alice")) == sorted([first.id,
                                                                            second.id])
    assert await store.list_tokens("nobody") == []
    assert await store.revoke_token(first.id) is True
    assert await store.revoke_token(first.id) is False
    assert await store.find_token(DIGEST_1) is None
    with pytest.raises(NoSuchUser):
        await store.create_token("nobody", bytes(32))
    with pytest.raises(ValueError):
        await store.create_token("alice", b"short")


@pytest_twisted.ensureDeferred
async def test_tokens_list_oldest_first(backend: Backend) -> None:
    """list_tokens orders by creation time."""
    clock = Clock()
    store = backend.make(clock)
    await store.open()
    try:
        await store.add_user("alice", "h")
        clock.advance(10)
        late = await store.create_token("alice", DIGEST_2)
        clock.advance(-5)  # a clock step backwards must not reorder by insertion
        early = await store.create_token("alice", DIGEST_1)
        assert [t.id for t in await store.list_tokens("alice")] == [early.id, late.id]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_revoke_token_destroys_its_subscriptions(store: IStore) -> None:
    """PS-7: revoking a token destroys the subscriptions created with that token only."""
    alice = await store.add_user("alice", "h")
    token = await store.create_token("alice", DIGEST_1)
    other = await store.create_token("alice", DIGEST_2)
    for sub_id, credential in (("S1", "token:" + token.id), ("S2", "token:" + other.id),
                               ("S3", "basic:" + alice.id)):
        await store.create_push_subscription(subscription(sub_id, alice.id, credential), 10)
    await store.revoke_token(token.id)
    assert await store.push_subscription_ids() == {"S2", "S3"}


@pytest_twisted.ensureDeferred
async def test_auth_generation_bumps_on_credential_changes(store: IStore) -> None:
    """Every effective change to users, passwords, grants or tokens bumps the generation;
    reads, no-op changes, states, metadata and push subscriptions do not."""
    seen = [await store.auth_generation()]

    async def bumped() -> bool:
        seen.append(await store.auth_generation())
        return seen[-1] > seen[-2]

    alice = await store.add_user("alice", "h")
    assert await bumped()
    await store.set_password("alice", "h2")
    assert await bumped()
    await store.grant("alice", "Bshared")
    assert await bumped()
    await store.grant("alice", "Bshared")
    await store.grant("alice", alice.primary_account_id)
    assert not await bumped()
    await store.revoke_grant("alice", "Bshared")
    assert await bumped()
    await store.revoke_grant("alice", "Bshared")
    assert not await bumped()
    token = await store.create_token("alice", DIGEST_1)
    assert await bumped()
    await store.find_token(DIGEST_1)
    await store.record_changes({"A": {"Email": "s1"}})
    await store.set_meta("k", "v")
    await store.create_push_subscription(subscription("S1", alice.id, "basic:a"), 10)
    await store.delete_push_subscription("S1")
    await store.remove_user("nobody")
    assert not await bumped()
    await store.revoke_token(token.id)
    assert await bumped()
    await store.remove_user("alice")
    assert await bumped()


# -- metadata --


@pytest_twisted.ensureDeferred
async def test_meta(store: IStore) -> None:
    """Metadata values are stored, replaced, and None when absent."""
    assert await store.get_meta("vapid") is None
    await store.set_meta("vapid", "k1")
    await store.set_meta("vapid", "k2")
    await store.set_meta("other", "")
    assert await store.get_meta("vapid") == "k2"
    assert await store.get_meta("other") == ""


@pytest_twisted.ensureDeferred
async def test_add_meta_keeps_the_first_value(store: IStore) -> None:
    """add_meta stores a value only where none is, and always answers the stored one (how
    the resumption-token key is generated once and then shared)."""
    assert await store.add_meta("token-key", "first") == "first"
    assert await store.add_meta("token-key", "second") == "first"
    assert await store.get_meta("token-key") == "first"
    await store.set_meta("token-key", "replaced")
    assert await store.add_meta("token-key", "third") == "replaced"


@pytest_twisted.ensureDeferred
async def test_add_meta_from_two_store_objects_agrees(backend: Backend) -> None:
    """Two daemons on one store (two store objects on the same data) racing to add the
    same key both get the one value that won, and it outlives a reopen."""
    if not backend.persists:
        pytest.skip(f"the {backend.name} store shares no data between objects")
    one, two = backend.make(None), backend.make(None)
    await one.open()
    await two.open()
    try:
        answers = await defer.gatherResults([one.add_meta("k", "from-one"),
                                             two.add_meta("k", "from-two")])
        assert answers[0] == answers[1] and answers[0] in ("from-one", "from-two")
    finally:
        await one.close()
        await two.close()
    again = backend.make(None)
    await again.open()
    try:
        assert await again.add_meta("k", "later") == answers[0]
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_data_survives_reopen(backend: Backend) -> None:
    """A persistent backend keeps users, tokens, grants and metadata across reopen."""
    if not backend.persists:
        pytest.skip(f"the {backend.name} store keeps nothing after close")
    store = backend.make(None)
    await store.open()
    alice = await store.add_user("alice", "h")
    await store.grant("alice", "Bshared")
    token = await store.create_token("alice", DIGEST_1)
    await store.set_meta("k", "v")
    generation = await store.auth_generation()
    await store.close()
    store = backend.make(None)
    await store.open()
    try:
        assert await store.get_user("alice") == alice
        assert await store.find_token(DIGEST_1) == (token, alice)
        assert [a.id for a in await store.accounts_for_user(alice.id)][1:] == ["Bshared"]
        assert await store.get_meta("k") == "v"
        assert await store.auth_generation() == generation
    finally:
        await store.close()


def test_user_repr_hides_password_hash() -> None:
    """A User's repr never shows the password hash (it may end up in logs)."""
    assert "secret" not in repr(User("u1", "alice", "secret", "A1", 0.0))
