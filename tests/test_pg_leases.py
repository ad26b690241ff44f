"""Push delivery leases in PostgreSQL (issue 13): fair shares, takeover of expired
buckets, hand-back, the fenced record before a POST and the bucket function, against
a real server. Expiry is forced by rewriting ``expires`` (the database's clock), so
no test waits for a lease to run out."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from jmappushd.store.pgconnect import PgConnector
from jmappushd.store.pgleases import BUCKETS, bucket_of
from jmappushd.store.postgresql import PostgreSQLStore
from jmappushd.store.records import PushDelivery, PushSubscription
from tests.pg_server import PgServer

LEASE = 30.0


def store_on(dsn: str) -> PostgreSQLStore:
    return PostgreSQLStore(PgConnector(dsn), reactor, pool_size=2)


@pytest.fixture
def dsn(pg_server: PgServer) -> str:
    return pg_server.dsn(schema=pg_server.new_schema())


@pytest_twisted.async_yield_fixture
async def stores(dsn: str) -> AsyncIterator[list[PostgreSQLStore]]:
    """Three store objects on one schema: three nodes."""
    opened = [store_on(dsn) for _ in range(3)]
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.close()


def _sql(dsn: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        cursor = connection.execute(statement, args or None)
        return cursor.fetchall() if cursor.description else []


def expire(dsn: str, owner: str) -> None:
    """Make ``owner``'s leases and heartbeat run out now (as if it died long ago)."""
    _sql(dsn, "UPDATE push_leases SET expires = clock_timestamp() - interval '1 second' "
              "WHERE owner = %s", owner)
    _sql(dsn, "UPDATE cluster_nodes SET expires = clock_timestamp() - interval '1 second' "
              "WHERE name = %s", owner)


def subscription(sub_id: str, user_id: str) -> PushSubscription:
    return PushSubscription(
        id=sub_id, user_id=user_id, credential_id="pw:" + user_id, device_client_id="d",
        url="https://push.example/" + sub_id, keys_p256dh=None, keys_auth=None,
        verification_code="v", verified=True, client_verification_code=None,
        expires=4e9, types=None, vapid_key_id="k", created=1.0, delivery=PushDelivery())


def test_bucket_of_is_the_first_byte_of_sha256() -> None:
    """The Python bucket function and the SQL one agree by construction: both take the
    first byte of SHA-256 of the id's UTF-8; spot-check the spread over 256 buckets."""
    assert bucket_of("abc") == hashlib.sha256(b"abc").digest()[0]
    assert len({bucket_of(f"sub{i}") for i in range(5000)}) == BUCKETS


@pytest_twisted.ensureDeferred
async def test_one_node_takes_every_bucket_then_shares_them(
        stores: list[PostgreSQLStore], dsn: str) -> None:
    """Alone, a node holds all 256; when two more heartbeat, its renewal reports the
    excess above ceil(256/3) = 86, and after hand-back the others take their shares;
    no bucket is ever held by two nodes."""
    a, b, c = stores
    first = await a.renew_leases("a", LEASE)
    assert len(first.held) == BUCKETS and first.live_nodes == 1 and not first.excess
    b_first = await b.renew_leases("b", LEASE)
    assert b_first.held == frozenset() and b_first.live_nodes == 2
    await c.renew_leases("c", LEASE)
    again = await a.renew_leases("a", LEASE)
    assert again.live_nodes == 3 and len(again.excess) == BUCKETS - 86
    assert len(again.held) == BUCKETS  # still a's until handed back
    assert await a.release_leases("a", again.excess) == BUCKETS - 86
    b_share = await b.renew_leases("b", LEASE)
    c_share = await c.renew_leases("c", LEASE)
    assert len(b_share.held) == 86 and len(c_share.held) == BUCKETS - 86 - 86
    held_by = [again.held - again.excess, b_share.held, c_share.held]
    assert sum(len(h) for h in held_by) == BUCKETS
    assert frozenset().union(*held_by) == frozenset(range(BUCKETS))
    rows = _sql(dsn, "SELECT count(DISTINCT bucket), count(*) FROM push_leases "
                     "WHERE owner IS NOT NULL")
    assert rows == [(BUCKETS, BUCKETS)]


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_buckets_are_taken_after_expiry_only(
        stores: list[PostgreSQLStore], dsn: str) -> None:
    """Before its lease runs out nobody takes a node's buckets; after, the survivors
    split them (the dead node no longer counts as live), and the renewal says when the
    soonest other lease expires so a survivor can wake right then."""
    a, b, c = stores
    await a.renew_leases("a", LEASE)
    await b.renew_leases("b", LEASE)
    renewed = await a.renew_leases("a", LEASE)
    await a.release_leases("a", renewed.excess)
    b_held = (await b.renew_leases("b", LEASE)).held
    assert len(b_held) == 128
    early = await c.renew_leases("c", LEASE)
    assert early.held == frozenset()  # every bucket has an unexpired lease
    assert early.next_expiry is not None and 0 < early.next_expiry <= LEASE
    expire(dsn, "b")
    late = await c.renew_leases("c", LEASE)
    assert late.live_nodes == 2 and late.held == b_held  # share 128: all of b's
    assert (await a.renew_leases("a", LEASE)).held == renewed.held - renewed.excess


@pytest_twisted.ensureDeferred
async def test_concurrent_takeovers_never_share_a_bucket(
        stores: list[PostgreSQLStore], dsn: str) -> None:
    """Two nodes taking over at the same moment (SKIP LOCKED) split the free buckets.
    (Both heartbeat first: a node that renews before it sees the other takes all,
    and hands back the excess at its next renewal, as the first test shows.)"""
    a, b, _ = stores
    _sql(dsn, "INSERT INTO cluster_nodes VALUES ('a', clock_timestamp() + interval '30 s'),"
              " ('b', clock_timestamp() + interval '30 s')")
    for _ in range(3):
        _sql(dsn, "UPDATE push_leases SET owner = NULL, expires = '-infinity'")
        got = await defer.gatherResults([a.renew_leases("a", LEASE),
                                         b.renew_leases("b", LEASE)])
        assert not got[0].held & got[1].held
        assert len(got[0].held) == len(got[1].held) == 128


@pytest_twisted.ensureDeferred
async def test_the_fence_refuses_a_node_without_the_lease(
        stores: list[PostgreSQLStore], dsn: str) -> None:
    """The record before a POST lands only for the bucket's holder with more than the
    margin left; a former holder gets ``held=False`` and the row keeps the new owner's
    state; a deleted row is ``saved=False, held=True``."""
    a, b, _ = stores
    await a.add_user("alice", "x")
    user = await a.get_user("alice")
    assert user is not None
    sub = await a.create_push_subscription(subscription("sub-1", user.id), 10)
    await a.renew_leases("a", LEASE)
    d1 = PushDelivery({"A": {"Email": "s1"}}, 1, 100.0, None, 5, 0, None)
    assert await a.save_push_delivery_fenced("a", sub.id, d1, 10.0) == (True, True)
    assert await b.save_push_delivery_fenced("b", sub.id, d1, 10.0) == (False, False)
    # Less than the margin left: even the holder may not start a POST.
    assert await a.save_push_delivery_fenced("a", sub.id, d1, LEASE + 5) == (False, False)
    expire(dsn, "a")
    taken = await b.renew_leases("b", LEASE)
    assert bucket_of(sub.id) in taken.held
    d2 = PushDelivery({"A": {"Email": "s2"}}, 2, 200.0, None, 6, 0, None)
    assert await b.save_push_delivery_fenced("b", sub.id, d2, 10.0) == (True, True)
    assert await a.save_push_delivery_fenced("a", sub.id, d1, 10.0) == (False, False)
    [loaded] = await b.push_subscriptions_in([bucket_of(sub.id)])
    assert loaded.delivery == d2  # the new owner resumes from its own record
    await b.delete_push_subscription(sub.id)
    assert await b.save_push_delivery_fenced("b", sub.id, d2, 10.0) == (False, True)


@pytest_twisted.ensureDeferred
async def test_buckets_load_their_subscriptions_and_leaving_frees_everything(
        stores: list[PostgreSQLStore], dsn: str) -> None:
    """push_subscriptions_in answers exactly the subscriptions of the asked buckets
    (the SQL bucket matches Python's); leave_cluster frees every lease and the
    heartbeat, so the next node's share is all 256."""
    a, b, _ = stores
    await a.add_user("bob", "x")
    user = await a.get_user("bob")
    assert user is not None
    ids = [f"s{i}" for i in range(40)]
    for sub_id in ids:
        await a.create_push_subscription(subscription(sub_id, user.id), 100)
    some = {bucket_of(i) for i in ids[:10]}
    loaded = await a.push_subscriptions_in(some)
    assert sorted(r.id for r in loaded) == sorted(i for i in ids if bucket_of(i) in some)
    assert (await a.get_push_subscription("s3")) is not None
    assert (await a.get_push_subscription("nope")) is None
    await a.renew_leases("a", LEASE)
    await b.renew_leases("b", LEASE)
    await a.leave_cluster("a")
    after = await b.renew_leases("b", LEASE)
    assert after.live_nodes == 1 and len(after.held) == BUCKETS


@pytest_twisted.ensureDeferred
async def test_owners_are_incarnations_and_namesakes_are_counted(
        stores: list[PostgreSQLStore]) -> None:
    """Two daemons given one node name are two owners (``name/incarnation``): they share
    buckets out like any two nodes and each sees the other as a namesake to warn of."""
    a, b, _ = stores
    await a.renew_leases("mail1/aaaa", LEASE)
    first = await b.renew_leases("mail1/bbbb", LEASE)
    again = await a.renew_leases("mail1/aaaa", LEASE)
    assert first.namesakes == again.namesakes == 1 and again.live_nodes == 2
    assert first.held == frozenset() and len(again.excess) == 128
    assert (await a.renew_leases("mail10/cccc", LEASE)).namesakes == 0
