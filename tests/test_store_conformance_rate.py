"""Every store backend against the push subscription creation rate (PS-19, issue 13).

``create_push_subscription(..., rate)`` counts a user's creations in the sliding window
before the new subscription's ``created`` time; PostgreSQL counts every node's (several
store objects on one database), which the last tests check with two store objects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.python.failure import Failure

from jmappushd.store import CreationRate, IStore, PushQuotaExceeded, PushRateLimited
from jmappushd.store.pgconnect import PgConnector
from jmappushd.store.pgpushops import SWEEP_ROWS
from jmappushd.store.postgresql import PostgreSQLStore
from jmappushd.store.ratewindow import CreationWindows
from tests.pg_server import PgServer
from tests.store_backends import (  # noqa: F401 - fixtures
    backend_fixture,
    store_fixture,
    subscription,
)

RATE = CreationRate(2, 60.0)


@pytest_twisted.ensureDeferred
async def test_creations_are_limited_per_user_in_a_sliding_window(store: IStore) -> None:
    """PS-19: at most ``limit`` creations per user in any ``window`` seconds, measured at
    each subscription's ``created``; other users are apart; the window slides."""
    alice = await store.add_user("alice", "h")
    bob = await store.add_user("bob", "h")
    await store.create_push_subscription(subscription("S1", alice.id, "t", created=100.0), 10,
                                         RATE)
    await store.create_push_subscription(subscription("S2", alice.id, "t", created=130.0), 10,
                                         RATE)
    with pytest.raises(PushRateLimited) as info:
        await store.create_push_subscription(
            subscription("S3", alice.id, "t", created=159.0), 10, RATE)
    assert (info.value.limit, info.value.window) == (2, 60.0)
    await store.create_push_subscription(subscription("S4", bob.id, "t", created=159.0), 10,
                                         RATE)
    # S1 left the window at 160.0 (a creation exactly one window older no longer counts).
    await store.create_push_subscription(subscription("S5", alice.id, "t", created=160.0), 10,
                                         RATE)
    with pytest.raises(PushRateLimited):
        await store.create_push_subscription(
            subscription("S6", alice.id, "t", created=189.9), 10, RATE)
    assert await store.push_subscription_ids() == {"S1", "S2", "S4", "S5"}


@pytest_twisted.ensureDeferred
async def test_refused_creations_are_not_counted(store: IStore) -> None:
    """A creation refused by the rate or by the quota counts for nothing: the window holds
    only subscriptions that were stored."""
    alice = await store.add_user("alice", "h")
    await store.create_push_subscription(subscription("S1", alice.id, "t", created=100.0), 1,
                                         RATE)
    for n, at in enumerate((101.0, 102.0, 103.0)):
        with pytest.raises(PushQuotaExceeded):  # quota 1 is full; rate still has room
            await store.create_push_subscription(
                subscription(f"Q{n}", alice.id, "t", created=at), 1, RATE)
    await store.create_push_subscription(subscription("S2", alice.id, "t", created=104.0), 10,
                                         RATE)
    with pytest.raises(PushRateLimited):
        await store.create_push_subscription(
            subscription("S3", alice.id, "t", created=105.0), 10, RATE)
    # The refusal at 105 did not count: at 160.5 only S2 (104) is in the window.
    await store.create_push_subscription(subscription("S4", alice.id, "t", created=160.5), 10,
                                         RATE)
    assert await store.push_subscription_ids() == {"S1", "S2", "S4"}


@pytest_twisted.ensureDeferred
async def test_without_a_rate_nothing_is_limited(store: IStore) -> None:
    """No ``rate``: only the quota applies (jmappushctl and tests create that way)."""
    alice = await store.add_user("alice", "h")
    for n in range(5):
        await store.create_push_subscription(
            subscription(f"S{n}", alice.id, "t", created=100.0), 10)
    assert len(await store.push_subscription_ids()) == 5


@pytest_twisted.ensureDeferred
async def test_refusal_keeps_its_turn(store: IStore) -> None:
    """Call order (interface (a)): a rate refusal fires in its turn among other calls."""
    alice = await store.add_user("alice", "h")
    order: list[str] = []

    async def create(n: int) -> None:
        try:
            await store.create_push_subscription(
                subscription(f"S{n}", alice.id, "t", created=100.0 + n), 10, RATE)
        except PushRateLimited:
            order.append(f"S{n}:limited")
        else:
            order.append(f"S{n}")

    async def ids() -> None:
        order.append(f"ids={sorted(await store.push_subscription_ids())}")

    # Each coroutine makes its store call at once, so the calls are made in this order.
    calls = [defer.ensureDeferred(create(n)) for n in range(3)]
    calls.append(defer.ensureDeferred(ids()))
    await defer.gatherResults(calls)
    assert order == ["S0", "S1", "S2:limited", "ids=['S0', 'S1']"]


def test_memory_windows_stay_bounded() -> None:
    """The single-process window keeps at most ``limit`` times per user and forgets users
    whose creations left the window once it holds ``max_users``."""
    windows = CreationWindows(max_users=3)
    for n in range(10):
        windows.count("a", 100.0 + n, RATE)
    assert len(windows._recent["a"]) == RATE.limit
    for user in ("b", "c"):
        windows.count(user, 100.0, RATE)
    windows.count("d", 200.0, RATE)
    assert len(windows) == 1
    windows.check("d", 200.0, CreationRate(2, 60.0))  # one counted: room for one more
    windows.count("d", 201.0, RATE)
    with pytest.raises(PushRateLimited):
        windows.check("d", 202.0, RATE)


# -- PostgreSQL: every node on the database counts against one window --


def _pg_store(dsn: str) -> PostgreSQLStore:
    return PostgreSQLStore(PgConnector(dsn), reactor, pool_size=4)


@pytest_twisted.async_yield_fixture(name="two_nodes")
async def two_nodes_fixture(pg_server: PgServer
                            ) -> AsyncIterator[tuple[str, PostgreSQLStore, PostgreSQLStore]]:
    dsn = pg_server.dsn(schema=pg_server.new_schema())
    a, b = _pg_store(dsn), _pg_store(dsn)
    await a.open()
    await b.open()
    yield dsn, a, b
    await a.close()
    await b.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_counts_every_node(
        two_nodes: tuple[str, PostgreSQLStore, PostgreSQLStore]) -> None:
    """Issue 13: creations for one user through two store objects (two nodes), even at
    once, are limited to ``limit`` in total."""
    _, a, b = two_nodes
    alice = await a.add_user("alice", "h")
    rate = CreationRate(5, 60.0)
    calls = [(a if n % 2 else b).create_push_subscription(
        subscription(f"S{n}", alice.id, "t", created=100.0 + n / 10), 100, rate)
        for n in range(12)]
    results = await defer.DeferredList(calls, consumeErrors=True)
    stored = [n for n, (ok, _) in enumerate(results) if ok]
    refused = [value for ok, value in results if not ok]
    assert len(stored) == 5 and len(refused) == 7
    assert all(isinstance(f, Failure) and f.check(PushRateLimited) for f in refused)
    assert len(await b.push_subscription_ids()) == 5


@pytest_twisted.ensureDeferred
async def test_postgresql_prunes_old_creations(
        two_nodes: tuple[str, PostgreSQLStore, PostgreSQLStore]) -> None:
    """Rows older than the window go: the user's own at its next creation, anybody's in
    batches of SWEEP_ROWS at any creation; a removed user's go with it."""
    dsn, a, _ = two_nodes
    users = [await a.add_user(f"user{n}", "h") for n in range(3)]
    for n in range(SWEEP_ROWS + 20):
        user = users[n % 2]
        await a.create_push_subscription(
            subscription(f"S{n}", user.id, "t", created=100.0 + n / 1000), 1000,
            CreationRate(1000, 60.0))

    def rows() -> int:
        with psycopg.connect(dsn, autocommit=True) as connection:
            found = connection.execute("SELECT count(*) FROM push_creations").fetchone()
            return -1 if found is None else int(str(found[0]))

    assert rows() == SWEEP_ROWS + 20
    await a.create_push_subscription(subscription("L1", users[2].id, "t", created=500.0), 10,
                                     RATE)
    assert rows() == 20 + 1  # one batch swept, the new row added
    await a.create_push_subscription(subscription("L2", users[2].id, "t", created=501.0), 10,
                                     RATE)
    assert rows() == 2
    await a.remove_user("user2")
    assert rows() == 0
