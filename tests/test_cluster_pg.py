"""The cluster bus against a real PostgreSQL (tests/pg_server.py): two store objects on one
schema stand for two nodes; NOTIFY wakes the other node through its LISTEN connection on
the reactor; a killed LISTEN backend is reconnected and what was published meanwhile is
read from the watermark; resumption below the pruned log horizon loses nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task
from twisted.internet.interfaces import IReactorFDSet

from jmappushd.core.hub import Hub
from jmappushd.core.logbus import LogBus
from jmappushd.reactor import IDaemonReactor
from jmappushd.store import pgops
from jmappushd.store.pgconnect import PgConnector
from jmappushd.store.pglisten import ListenWatcher
from jmappushd.store.postgresql import PostgreSQLStore
from tests.pg_server import PgServer
from tests.support import log_into
from tests.test_cluster_bus import Recorder

reactor = cast(IDaemonReactor, global_reactor)


@dataclass
class Node:
    store: PostgreSQLStore
    hub: Hub
    bus: LogBus
    watcher: ListenWatcher
    recorder: Recorder

    async def stop(self) -> None:
        self.watcher.stop()
        await self.bus.stop()
        await self.store.close()


async def start_node(dsn: str, poll_interval: float = 3600.0) -> Node:
    """A node that reads the log only when woken (a tick of an hour never comes here)."""
    store = PostgreSQLStore(PgConnector(dsn), reactor, pool_size=2)
    await store.open()
    bus = LogBus(store, reactor, poll_interval=poll_interval)
    hub = Hub(store, bus)
    bus.attach(hub)
    await hub.start()
    watcher = ListenWatcher(store.connector, reactor, cast(IReactorFDSet, reactor), bus.wake)
    recorder = Recorder()
    hub.subscribe(recorder, ["A", "B"])
    bus.start()
    watcher.start()
    return Node(store, hub, bus, watcher, recorder)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await task.deferLater(global_reactor, 0.02, lambda: None)


@pytest.fixture
async def two_nodes(pg_server: PgServer) -> AsyncIterator[tuple[Node, Node]]:
    dsn = pg_server.dsn(schema=pg_server.new_schema())
    a = await start_node(dsn)
    b = await start_node(dsn)
    await eventually(lambda: a.watcher.connected and b.watcher.connected, "LISTEN")
    yield a, b
    await a.stop()
    await b.stop()


@pytest_twisted.ensureDeferred
async def test_notify_wakes_the_other_node(pg_server: PgServer) -> None:
    """A publish on node A reaches node B's listener through NOTIFY alone (B has no tick),
    once, in order; A's own notification delivers nothing twice (it may cost A a read when
    it arrives before the commit's answer, which the store then hands out first)."""
    dsn = pg_server.dsn(schema=pg_server.new_schema())
    a, b = await start_node(dsn), await start_node(dsn)
    try:
        await eventually(lambda: a.watcher.connected and b.watcher.connected, "LISTEN")
        for n in range(3):
            await a.hub.publish({"A": {"Email": f"s{n}"}})
        await eventually(lambda: b.hub.last_seq == 3, "node B at seq 3")
        assert b.recorder.seqs == [1, 2, 3]
        assert a.recorder.seqs == [1, 2, 3]
        await a.hub.publish({"A": {"Email": "s3"}})
        await eventually(lambda: b.hub.last_seq == 4, "node B at seq 4")
        assert a.recorder.seqs == [1, 2, 3, 4] and b.recorder.seqs == [1, 2, 3, 4]
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_lost_listen_connection_is_reconnected_and_read_from_the_watermark(
        pg_server: PgServer) -> None:
    """The server ends B's LISTEN session (as a restart would): B logs the outage once,
    reconnects, and reads what A published while B could not hear: nothing lost."""
    dsn = pg_server.dsn(schema=pg_server.new_schema())
    events: list[dict[str, object]] = []
    observer = log_into(events)
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(observer)
    a, b = await start_node(dsn), await start_node(dsn)
    try:
        await eventually(lambda: a.watcher.connected and b.watcher.connected, "LISTEN")
        with pg_server.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()")
        await eventually(lambda: not b.watcher.connected, "B noticing")
        await a.hub.publish({"B": {"Email": "t1"}})  # notified to nobody who listens
        assert b.recorder.seqs == []
        await eventually(lambda: b.watcher.connected and b.hub.last_seq == 1,
                         "B reconnected and caught up")
        assert b.recorder.seqs == [1] and b.watcher.connects == 2
        await a.hub.publish({"B": {"Email": "t2"}})
        await eventually(lambda: b.hub.last_seq == 2, "B woken again")
    finally:
        globalLogPublisher.removeObserver(observer)
        await a.stop()
        await b.stop()
    texts = [str(e.get("log_format")) for e in events]
    assert sum("not listening for changes" in t for t in texts) == 2  # one each: A and B
    assert sum("listening for changes on {name} again" in t for t in texts) == 2


@pytest_twisted.ensureDeferred
async def test_a_token_below_the_pruned_horizon_still_resumes_exactly(
        pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catch-up reads the folded states table (and the tail above the fold mark), so a
    position older than the pruned horizon still gets every state changed since it (never
    a missed one), and a node that was behind it gets the missed newest states merged
    (tokens carry no log position)."""
    monkeypatch.setattr(pgops, "LOG_KEEP", 3)
    monkeypatch.setattr(pgops, "PRUNE_EVERY", 2)
    dsn = pg_server.dsn(schema=pg_server.new_schema())
    store = PostgreSQLStore(PgConnector(dsn), reactor, pool_size=2)
    await store.open()
    try:
        await store.record_changes({"A": {"Email": "s1", "Mailbox": "m1"}})
        for n in range(2, 11):
            await store.record_changes({"A": {"Email": f"s{n}"}} if n != 5 else
                                       {"B": {"Email": "t5"}})
        assert await store.fold() == 10  # the fold prunes, never above its mark
        logged = [seq for seq, _ in await store.changes_after(0)]
        assert logged[0] > 2 and logged[-1] == 10  # seqs 1 and 2 are pruned
        assert await store.changes_since(1, ["A", "B"]) == {"A": {"Email": "s10"},
                                                           "B": {"Email": "t5"}}
        assert await store.changes_since(0, ["A"]) == {"A": {"Email": "s10", "Mailbox": "m1"}}
        assert await store.states_changed(0, 5) == {"A": {"Mailbox": "m1"},
                                                    "B": {"Email": "t5"}}
        # A node whose watermark is 0: the bus hands it the pruned part merged.
        bus = LogBus(store, reactor)
        hub = Hub(store, bus)
        bus.attach(hub)
        await hub.start()
        hub.last_seq = 0  # as if it had been away since the start
        recorder = Recorder()
        hub.subscribe(recorder, ["A", "B"])
        bus.wake(None)
        await eventually(lambda: hub.last_seq == 10, "the node at seq 10")
        merged: dict[str, dict[str, str]] = {}
        for change in recorder.changes:
            for account, types in change.changed.items():
                merged.setdefault(account, {}).update(types)
        assert merged == {"A": {"Email": "s10", "Mailbox": "m1"}, "B": {"Email": "t5"}}
        await bus.stop()
    finally:
        await store.close()
