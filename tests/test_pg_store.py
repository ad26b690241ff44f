"""What the PostgreSQL store does beyond the conformance suite, against a real server: the
change log the hub's fill_gap reads, pruning, the wake-up notification, migrations and
their refusals, several store objects publishing at once, passwords from a file, and
losing and regaining the server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from jmappushd.core.hub import ChangeLog, Hub
from jmappushd.store import SchemaTooNew, StoreError, StoreUnavailable, pgops
from jmappushd.store.pgconnect import PgConnector, read_password_file
from jmappushd.store.pgschema import MIGRATIONS, read_version
from jmappushd.store.postgresql import PostgreSQLStore
from tests.pg_server import ROLE_PASSWORD, PgServer, start_private_server
from tests.support import free_port


def store_on(dsn: str, pool_size: int = 4, password_file: str = "") -> PostgreSQLStore:
    return PostgreSQLStore(PgConnector(dsn, password_file), reactor, pool_size=pool_size)


@pytest.fixture
def dsn(pg_server: PgServer) -> str:
    return pg_server.dsn(schema=pg_server.new_schema())


@pytest_twisted.async_yield_fixture
async def store(dsn: str) -> AsyncIterator[PostgreSQLStore]:
    opened = store_on(dsn)
    await opened.open()
    yield opened
    await opened.close()


@pytest_twisted.ensureDeferred
async def test_changes_after_reads_the_log_in_order(store: PostgreSQLStore) -> None:
    """changes_after answers each publish as recorded, in seq order, at most ``limit``."""
    await store.record_changes_batch([{"A": {"Email": "s1"}}, {"B": {"Email": "b1",
                                                                     "Mailbox": "m1"}}])
    await store.record_changes({"A": {"Email": "s2"}})
    assert await store.changes_after(0) == [
        (1, {"A": {"Email": "s1"}}), (2, {"B": {"Email": "b1", "Mailbox": "m1"}}),
        (3, {"A": {"Email": "s2"}})]
    assert await store.changes_after(1, limit=1) == [(2, {"B": {"Email": "b1",
                                                                "Mailbox": "m1"}})]
    assert await store.changes_after(3) == []


@pytest_twisted.ensureDeferred
async def test_hub_fill_gap_heals_from_the_log(store: PostgreSQLStore) -> None:
    """A change another node recorded (here a second store object) reaches this node's hub
    through fill_gap, the seam the cluster bus will drive."""
    hub = Hub(store)
    await hub.start()
    log: ChangeLog = store
    other = PostgreSQLStore(store.connector, reactor)
    await other.open()
    try:
        await other.record_changes({"A": {"Email": "elsewhere"}})
    finally:
        await other.close()
    assert hub.last_seq == 0
    assert await hub.fill_gap(log) == 1


@pytest_twisted.ensureDeferred
async def test_the_log_is_pruned_past_its_horizon(store: PostgreSQLStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold crossing a multiple of PRUNE_EVERY deletes entries older than LOG_KEEP, and
    never one above the fold mark: publishing alone prunes nothing. States, and so
    catch-up, keep everything."""
    monkeypatch.setattr(pgops, "PRUNE_EVERY", 4)
    monkeypatch.setattr(pgops, "LOG_KEEP", 3)
    for i in range(1, 10):
        await store.record_changes({f"A{i}": {"Email": f"s{i}"}})
    assert [seq for seq, _ in await store.changes_after(0)] == list(range(1, 10))
    assert await store.fold() == 9
    assert [seq for seq, _ in await store.changes_after(0)] == [7, 8, 9]
    assert len(await store.changes_since(0, [f"A{i}" for i in range(1, 10)])) == 9


@pytest_twisted.ensureDeferred
async def test_each_publish_notifies_its_last_seq(store: PostgreSQLStore) -> None:
    """A session LISTENing on CHANGES_CHANNEL gets the batch's last seq at commit (the
    cluster wake-up); the connection comes from the store's own connector."""
    listener = store.connector.connect()
    try:
        listener.execute(f"LISTEN {pgops.CHANGES_CHANNEL}".encode())
        await store.record_changes_batch([{"A": {"Email": "s1"}}, {"A": {"Email": "s2"}}])
        payloads = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    finally:
        listener.close()
    assert payloads == ["2"]


@pytest_twisted.ensureDeferred
async def test_store_objects_publishing_at_once_get_contiguous_seqs(dsn: str) -> None:
    """Three store objects (three nodes) publishing concurrently: every seq is handed out
    once, with no hole, and each object's own seqs increase in its call order."""
    stores = [store_on(dsn) for _ in range(3)]
    for one in stores:
        await one.open()
    try:
        calls = [[one.record_changes({f"A{n}": {"Email": f"s{i}"}}) for i in range(20)]
                 for n, one in enumerate(stores)]
        results = [await defer.gatherResults(per_store) for per_store in calls]
    finally:
        for one in stores:
            await one.close()
    seqs = sorted(seq for per_store in results for seq in per_store)
    assert seqs == list(range(1, 61))
    assert all(per_store == sorted(per_store) for per_store in results)


@pytest_twisted.ensureDeferred
async def test_first_open_migrates_once_with_one_epoch(dsn: str) -> None:
    """Several daemons opening a new database at once: one creates the schema (under the
    advisory lock), all agree on the epoch, and the version is the newest."""
    stores = [store_on(dsn, pool_size=1) for _ in range(4)]
    await defer.gatherResults([one.open() for one in stores])
    try:
        epochs = {(await one.position())[0] for one in stores}
    finally:
        for one in stores:
            await one.close()
    assert len(epochs) == 1
    with psycopg.connect(dsn, autocommit=True) as connection:
        assert read_version(connection) == len(MIGRATIONS)


@pytest_twisted.ensureDeferred
async def test_a_newer_schema_is_refused(dsn: str) -> None:
    """A database a newer jmappushd wrote is not touched: open fails with SchemaTooNew."""
    first = store_on(dsn)
    await first.open()
    await first.close()
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("UPDATE jmappushd_schema SET version = 99")
    again = store_on(dsn)
    with pytest.raises(SchemaTooNew, match="version 99 is newer"):
        await again.open()
    await again.close()


def test_password_file_is_checked(tmp_path: Path) -> None:
    """The password file: one line, readable by its owner only (each a one-line error)."""
    path = tmp_path / "pw"
    path.write_text("secret\n")
    path.chmod(0o600)
    assert read_password_file(str(path)) == "secret"
    path.chmod(0o640)
    with pytest.raises(StoreError, match=r"password-file .*chmod 0600"):
        read_password_file(str(path))
    path.chmod(0o600)
    path.write_text("one\ntwo\n")
    with pytest.raises(StoreError, match="on one line"):
        read_password_file(str(path))
    with pytest.raises(StoreError, match="cannot read"):
        read_password_file(str(tmp_path / "missing"))


@pytest_twisted.ensureDeferred
async def test_tcp_login_with_the_password_file(pg_server: PgServer, tmp_path: Path) -> None:
    """Over TCP the role needs its password: from the password file it logs in; a wrong one
    is StoreUnavailable naming the server, without the password."""
    path = tmp_path / "pw"
    path.write_text(ROLE_PASSWORD + "\n")
    os.chmod(path, 0o600)
    dsn = pg_server.tcp_dsn(pg_server.new_database())
    good = store_on(dsn, password_file=str(path))
    await good.open()
    try:
        assert (await good.position())[1] == 0
    finally:
        await good.close()
    path.write_text("wrong\n")
    bad = store_on(dsn, password_file=str(path))
    with pytest.raises(StoreUnavailable) as info:
        await bad.open()
    assert f"127.0.0.1:{pg_server.port}" in str(info.value) and "wrong" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_unreachable_server_fails_open_and_open_may_be_retried() -> None:
    """Nothing listening: open fails with StoreUnavailable, and a later open() is allowed
    (the core retries the same store object)."""
    unreachable = store_on(f"host=127.0.0.1 port={free_port()} user=x dbname=x "
                           "connect_timeout=2")
    for _ in range(2):
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1"):
            await unreachable.open()


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of this test's own, which it may stop and start."""
    server = start_private_server()
    yield server
    server.destroy()


@pytest_twisted.ensureDeferred
async def test_server_restart_is_survived(own_server: PgServer) -> None:
    """While the server is down calls fail with StoreUnavailable (no hang, no traceback);
    once it is back the pooled, now dead, connections are replaced and nothing is lost."""
    store = store_on(own_server.dsn(schema=own_server.new_schema()), pool_size=2)
    await store.open()
    try:
        seq = await store.record_changes({"A": {"Email": "before"}})
        await defer.gatherResults([store.position(), store.position()])  # two pooled
        own_server.stop()
        own_server.start()
        # Both idle connections died with the server: each call notices on BEGIN and
        # runs on a new connection instead of failing.
        assert await defer.gatherResults([store.get_meta("k"), store.get_meta("k")]) == [
            None, None]
        own_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.record_changes({"A": {"Email": "lost"}})
        with pytest.raises(StoreUnavailable):
            await store.position()
        own_server.start()
        assert await store.position() == ((await store.position())[0], seq)
        assert await store.record_changes({"A": {"Email": "after"}}) == seq + 1
        assert await store.current_states(["A"]) == {"A": {"Email": "after"}}
        # A publish (and a log read) is one statement without BEGIN: a pooled connection
        # the restart closed is noticed before the statement is sent and replaced.
        await defer.gatherResults([store.position(), store.position()])  # two pooled
        own_server.stop()
        own_server.start()
        assert await defer.gatherResults([
            store.record_changes({"A": {"Email": "again"}}),
            store.record_changes({"B": {"Email": "b"}})]) == [seq + 2, seq + 3]
        assert [s for s, _ in await store.changes_after(seq + 1)] == [seq + 2, seq + 3]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_close_runs_queued_calls_first(dsn: str) -> None:
    """Calls queued when close() is called (more than the pool runs at once) still run and
    fire in call order; calls after it fail at once with StoreClosed."""
    from jmappushd.store import StoreClosed

    store = store_on(dsn, pool_size=1)
    await store.open()
    fired: list[int] = []
    calls = [store.record_changes({"A": {"Email": f"s{i}"}}) for i in range(5)]
    calls += [store.position().addCallback(lambda p: p[1])]
    def note(value: int) -> int:
        fired.append(value)
        return value

    for d in calls:
        d.addCallback(note)
    closing = store.close()
    with pytest.raises(StoreClosed):
        await store.position()
    await defer.gatherResults(calls)
    await closing
    assert fired == [1, 2, 3, 4, 5, 5]
