"""The shared connection registry: per-user counts, shutdown, and applying verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from jmappushd.core.connections import ConnectionRegistry, EndReason
from jmappushd.core.revalidation import password_fingerprint
from jmappushd.store.memory import MemoryStore
from jmappushd.store.records import Account, TokenRecord, User


@dataclass(eq=False)
class Conn:
    """A minimal member: records what the registry tells it."""

    registry: ConnectionRegistry[Conn]
    user_id: str
    credential_id: str
    account_ids: frozenset[str] = frozenset({"A"})
    ended: list[EndReason] = field(default_factory=list)

    def end(self, reason: EndReason) -> None:
        self.ended.append(reason)
        self.registry.discard(self)

    def grants_changed(self, accounts: tuple[Account, ...]) -> None:
        self.account_ids = frozenset(a.id for a in accounts)


class Store(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.users = {"u1": User("u1", "alice", "h1", "A", 0.0)}
        self.lookups = 0

    def get_user_by_id(self, user_id: str) -> defer.Deferred[Any]:
        self.lookups += 1
        return defer.succeed(self.users.get(user_id))

    def list_tokens(self, name: str) -> defer.Deferred[Any]:
        return defer.succeed([TokenRecord("t1", "u1", 0.0, "")])

    def accounts_for_user(self, user_id: str) -> defer.Deferred[Any]:
        return defer.succeed([Account("A", "alice", True)])


def make() -> tuple[ConnectionRegistry[Conn], Store]:
    store = Store()
    return ConnectionRegistry(store, "Test"), store


def test_counts_per_user_and_when_empty() -> None:
    """Per-user counts feed the connection limit; when_empty fires once the last leaves."""
    registry, _ = make()
    a1, a2 = Conn(registry, "u1", "token:t1"), Conn(registry, "u1", "token:t1")
    b = Conn(registry, "u2", "token:x")
    for conn in (a1, a2, b, a1):
        registry.add(conn)
    assert (registry.count, registry.count_for("u1"), registry.count_for("u2")) == (3, 2, 1)
    drained = registry.when_empty()
    registry.discard(a1)
    registry.discard(a1)  # idempotent
    registry.discard(b)
    assert not drained.called and registry.count == 1
    registry.discard(a2)
    assert drained.called and registry.members() == []


def test_close_all_ends_with_shutdown_and_refuses_revalidation() -> None:
    """Shutdown ends every member with SHUTDOWN and marks the registry closing."""
    registry, store = make()
    conn = Conn(registry, "u1", "token:t1")
    registry.add(conn)
    registry.close_all()
    assert conn.ended == [EndReason.SHUTDOWN] and registry.closing
    registry.invalidate()
    assert store.lookups == 0


def test_each_user_is_looked_up_once_per_revalidation() -> None:
    """Several members of one user cost one user lookup per revalidation."""
    registry, store = make()
    for _ in range(5):
        registry.add(Conn(registry, "u1", "token:t1"))
    registry.invalidate()
    assert store.lookups == 1


def test_remember_password_takes_the_fingerprint_once() -> None:
    """A transport that could not pass the fingerprint gets it looked up once; a later
    password change then ends the member with REVOKED."""
    registry, store = make()
    conn = Conn(registry, "u1", "password:u1")
    registry.add(conn)
    registry.remember_password(conn)
    assert registry._users["u1"].password_fp == password_fingerprint("h1")
    registry.remember_password(conn)
    assert store.lookups == 1
    store.users["u1"] = User("u1", "alice", "h2", "A", 0.0)
    registry.invalidate()
    assert conn.ended == [EndReason.REVOKED]


def test_one_users_failed_lookup_does_not_skip_the_others() -> None:
    """A store error while re-checking one user is logged and the remaining users are
    still re-checked (a removed user's connections end even if another lookup failed)."""
    registry, store = make()
    good = Conn(registry, "u1", "token:t1")
    broken = Conn(registry, "u0", "token:t0")
    registry.add(broken)  # checked first
    registry.add(good)
    original = store.get_user_by_id

    def flaky(user_id: str) -> defer.Deferred[Any]:
        if user_id == "u0":
            return defer.fail(RuntimeError("database hiccup"))
        return original(user_id)

    store.get_user_by_id = flaky  # type: ignore[method-assign]
    del store.users["u1"]  # u1 was removed
    registry.invalidate()
    assert good.ended == [EndReason.REVOKED]
    assert broken.ended == []
