"""The one credential-revalidation policy (C-WS-5, PS-7), and each transport applying it.

For every transport the same five cases: token revoked, password changed, user
removed, grant revoked, grant added. EventSource finishes the response, WebSocket
closes with 1008, Web Push subscriptions (durable, owned by a credential identity)
are destroyed on a revoked token or a removed user, follow grants, and survive a
password change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jmappushd.auth.authenticator import Principal
from jmappushd.core.revalidation import (
    FOLLOW,
    KEEP,
    PASSWORD_CHANGED,
    TOKEN_REVOKED,
    USER_REMOVED,
    UserFacts,
    password_fingerprint,
    verdict,
)
from jmappushd.store import MemoryStore
from jmappushd.store.records import Account
from tests import push_fakes
from tests.store_backends import fired
from tests.test_eventsource_stream import Env, auth_store, states
from tests.test_websocket_clock import close_code, enabled
from tests.test_websocket_helpers import Harness, write_config

AB = frozenset({"A", "B"})
FACTS = UserFacts(frozenset({"t1"}), password_fingerprint("h1"),
                  (Account("A", "a", True), Account("B", "b", False)), AB)


# -- the pure policy ----------------------------------------------------------------------


def test_verdict_removed_user_ends_everything() -> None:
    """A removed user ends every listener, whatever its credential."""
    assert verdict("token:t1", AB, None, None) is USER_REMOVED
    assert verdict("password:u1", AB, None, None) is USER_REMOVED


def test_verdict_revoked_token_ends_only_that_token() -> None:
    """A listener opened with a token no longer listed ends; one with a listed token stays."""
    assert verdict("token:t2", AB, FACTS, None) is TOKEN_REVOKED
    assert verdict("token:t1", AB, FACTS, None) is KEEP


def test_verdict_changed_password_ends_password_listeners_only() -> None:
    """A different stored-hash fingerprint ends password listeners; unknown (None) keeps
    them (the Web Push rule: a new password keeps subscriptions); tokens are unaffected."""
    old = password_fingerprint("h0")
    assert verdict("password:u1", AB, FACTS, old) is PASSWORD_CHANGED
    assert verdict("password:u1", AB, FACTS, password_fingerprint("h1")) is KEEP
    assert verdict("password:u1", AB, FACTS, None) is KEEP
    assert verdict("token:t1", AB, FACTS, old) is KEEP


def test_verdict_grant_change_follows() -> None:
    """A listener whose account set differs from the user's grants follows them."""
    assert verdict("token:t1", frozenset({"A"}), FACTS, None) is FOLLOW
    assert verdict("password:u1", frozenset({"A", "B", "C"}), FACTS, None) is FOLLOW


# -- EventSource --------------------------------------------------------------------------


def es_env() -> tuple[Env, MemoryStore]:
    """alice (u1, password hash h1) reads A and B and holds token t1."""
    store = auth_store()
    return Env(store=store), store


@pytest.mark.parametrize("case", ["token revoked", "password changed", "user removed"])
def test_eventsource_revoked_credentials_finish_the_stream(case: str) -> None:
    """EventSource: the stream opened with the revoked credential is finished; the one
    opened with the other credential of the same user goes on (unless the user is gone)."""
    env, store = es_env()
    password = env.stream(accounts=("A", "B"), credential="password:u1")
    token = env.stream(accounts=("A", "B"), credential="token:t1")
    env.registry.invalidate()  # the first pass records the password fingerprint
    if case == "token revoked":
        store.revoke_token("t1")
    elif case == "password changed":
        store.set_password("alice", "h2")
    else:
        store.remove_user("alice")
    env.registry.invalidate()
    ended = {s for s in (password, token) if s.request.finished}
    expected = {"token revoked": {token}, "password changed": {password},
                "user removed": {password, token}}[case]
    assert ended == expected
    assert env.registry.count == 2 - len(expected)


def test_eventsource_grants_revoked_and_added() -> None:
    """EventSource: the stream follows grants: a revoked account's changes stop, an
    added account's changes arrive, without reconnecting."""
    env, store = es_env()
    stream = env.stream(accounts=("A", "B"), credential="token:t1")
    store.revoke_grant("alice", "B")
    store.grant("alice", "C")
    env.registry.invalidate()
    env.publish({"B": {"Email": "b"}})
    env.publish({"C": {"Email": "c"}})
    assert states(stream) == [{"C": {"Email": "c"}}]
    assert stream.account_ids == {"A", "C"} and not stream.request.finished


# -- WebSocket ----------------------------------------------------------------------------


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(write_config(tmp_path, "ws-throttle = 0"))


@pytest.mark.parametrize("case", ["token revoked", "password changed", "user removed"])
def test_websocket_revoked_credentials_close_1008(h: Harness, case: str) -> None:
    """WebSocket (C-WS-5): the connection opened with the revoked credential is closed
    with 1008; the other credential's connection stays open (unless the user is gone)."""
    alice = h.store.add("alice", "A")
    token = fired(h.store.create_token("alice", bytes(32)))
    by_token = Principal(alice.user_id, "alice", "token:" + token.id, alice.accounts, "A")
    _p, password_t = enabled(h, alice)
    _t, token_t = enabled(h, by_token)
    h.app.auth.invalidate()  # the first pass records the password fingerprint
    if case == "token revoked":
        h.store.revoke_token(token.id)
    elif case == "password changed":
        h.store.set_password("alice", "new")
    else:
        h.store.remove_user("alice")
    h.app.auth.invalidate()
    closed = {name for name, t in (("password", password_t), ("token", token_t))
              if t.value() and close_code(t.take()) == 1008}
    expected = {"token revoked": {"token"}, "password changed": {"password"},
                "user removed": {"password", "token"}}[case]
    assert closed == expected


def test_websocket_grants_revoked_and_added(h: Harness) -> None:
    """WebSocket: push and later requests follow grants: the revoked account's changes
    stop, the added one's arrive, and the session's principal carries the new accounts."""
    alice = h.store.add("alice", "A")
    h.store.grant("alice", "B")
    alice = dataclasses.replace(alice, accounts=(*alice.accounts, Account("B", "B", False)))
    proto, transport = enabled(h, alice)
    h.store.revoke_grant("alice", "B")
    h.store.grant("alice", "C")
    h.app.auth.invalidate()
    h.publish({"B": {"Email": "b"}})
    h.publish({"C": {"Email": "c"}})
    assert [m["changed"] for m in transport.messages()] == [{"C": {"Email": "c"}}]
    assert proto.principal is not None and proto.principal.account_ids == {"A", "C"}


# -- Web Push -----------------------------------------------------------------------------


def push_harness() -> push_fakes.Harness:
    h = push_fakes.Harness()
    h.start(h.record("S1", credential_id="token:T"),
            h.record("S2", credential_id="password:u1"))
    return h


def delivered_to(h: push_fakes.Harness) -> dict[str, object]:
    out = {}
    while h.transport.calls:
        call = h.transport.pop()
        out[call.url.rsplit("/", 1)[1]] = h.decrypt(call)["changed"]
        call.answer(201)
    return out


def test_webpush_revoked_token_destroys_its_subscriptions() -> None:
    """PS-7: a revoked token's subscriptions stop and are deleted, even if the store had
    not deleted them yet; the password-owned one keeps receiving."""
    h = push_harness()
    # The token is gone but its subscription row is not (the store's cascade has not
    # run, e.g. a foreign writer): the delivery service destroys it itself.
    del h.store._data.tokens["T"]
    h.delivery.invalidated()
    assert h.delivery.get("S1") is None and "S1" in h.store.deleted
    h.publish({"A": {"Email": "e"}})
    assert delivered_to(h) == {"S2": {"A": {"Email": "e"}}}


def test_webpush_password_change_keeps_subscriptions() -> None:
    """A password change does NOT destroy Web Push subscriptions: the same password
    credential identity still owns them, and they keep receiving."""
    h = push_harness()
    h.store.set_password("u1", "a new hash")
    h.delivery.invalidated()
    assert h.delivery.get("S1") is not None and h.delivery.get("S2") is not None
    assert h.store.deleted == []
    h.publish({"A": {"Email": "e"}})
    assert set(delivered_to(h)) == {"S1", "S2"}


def test_webpush_removed_user_destroys_every_subscription() -> None:
    """A removed user's subscriptions stop at once, whatever credential owned them."""
    h = push_harness()
    h.store.remove_user("u1")
    h.delivery.invalidated()
    assert h.delivery.get("S1") is None and h.delivery.get("S2") is None
    h.publish({"A": {"Email": "e"}})
    assert h.transport.calls == []


def test_webpush_subscriptions_follow_grants() -> None:
    """Subscriptions follow grants: after A is revoked and C granted, A's changes are
    not pushed and C's are."""
    h = push_fakes.Harness()
    h.start(h.record("S1", credential_id="token:T", accounts=("X", "A")),
            h.record("S2", credential_id="password:u1", accounts=("X", "A")))
    h.store.revoke_grant("u1", "A")
    h.store.grant("u1", "C")
    h.delivery.invalidated()
    h.publish({"A": {"Email": "a"}, "C": {"Email": "c"}})
    assert delivered_to(h) == {"S1": {"C": {"Email": "c"}}, "S2": {"C": {"Email": "c"}}}
