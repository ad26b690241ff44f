"""The hub: durable record, fan-out by account, catch-up tokens across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from jmappushd.core.hub import Change, Hub, restrict
from jmappushd.core.position import make_token, parse_token
from jmappushd.store.sqlite import SQLiteStore
from tests.store_backends import fired, open_memory_store


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def change_published(self, change: Change) -> None:
        self.changes.append(change)


class Exploder:
    def change_published(self, change: Change) -> None:
        raise RuntimeError("boom")


async def open_hub(path: Path) -> tuple[Hub, SQLiteStore]:
    from twisted.internet import reactor

    store = SQLiteStore(str(path), reactor=reactor)
    await store.open()
    hub = Hub(store)
    await hub.start()
    return hub, store


def test_tokens_round_trip_and_reject_strangers() -> None:
    """Tokens encode (epoch, seq); another epoch or a future seq is unknown."""
    token = make_token("e1234", 1295)
    assert parse_token(token, "e1234", 2000) == 1295
    assert parse_token(token, "e9999", 2000) is None
    assert parse_token(token, "e1234", 10) is None
    for junk in (None, "", "garbage", "e1234-", "-5", "e1234-ZZ"):
        assert parse_token(junk, "e1234", 2000) is None


def test_restrict_filters_accounts_and_types() -> None:
    """ES-12: only readable accounts and wanted types; empty accounts are dropped."""
    changed = {"A": {"Email": "1", "Mailbox": "2"}, "B": {"Email": "3"}}
    assert restrict(changed, {"A"}, None) == {"A": {"Email": "1", "Mailbox": "2"}}
    assert restrict(changed, {"A", "B"}, frozenset({"Mailbox"})) == {"A": {"Mailbox": "2"}}
    assert restrict(changed, {"C"}, None) == {}
    assert restrict(changed, {"B"}, frozenset({"Mailbox"})) == {}
    assert restrict({"A": {}}, {"A"}, None) == {}
    assert restrict(changed, {"A", "B", "C"}, None) == changed
    # One account, every type: the change's own map, shared (results are read-only).
    assert restrict(changed, frozenset({"B"}), None)["B"] is changed["B"]


@pytest_twisted.ensureDeferred
async def test_fan_out_by_account_and_cancel(tmp_path: Path) -> None:
    """Listeners get changes for their accounts only, once per change, until cancelled;
    a failing listener does not stop the others."""
    hub, store = await open_hub(tmp_path / "db")
    a, ab, b = Recorder(), Recorder(), Recorder()
    sub_a = hub.subscribe(a, ["A"])
    hub.subscribe(ab, ["A", "B"])
    hub.subscribe(b, ["B"])
    hub.subscribe(Exploder(), ["A"])
    assert hub.listener_count == 4
    change = await hub.publish({"A": {"Email": "s1"}, "B": {"Email": "t1"}})
    assert [c.seq for c in a.changes] == [change.seq]
    assert len(ab.changes) == 1 and len(b.changes) == 1
    sub_a.cancel()
    sub_a.cancel()
    await hub.publish({"A": {"Email": "s2"}})
    assert len(a.changes) == 1 and len(ab.changes) == 2
    assert hub.listener_count == 3
    await store.close()


@pytest_twisted.ensureDeferred
async def test_catch_up_known_unknown_and_after_restart(tmp_path: Path) -> None:
    """A known token yields what changed since; an unknown one the full state; tokens
    stay valid after the store is reopened (a daemon restart)."""
    hub, store = await open_hub(tmp_path / "db")
    await hub.publish({"A": {"Email": "s1", "Mailbox": "m1"}, "B": {"Email": "x"}})
    mark = hub.token
    await hub.publish({"A": {"Email": "s2"}})
    await hub.publish({"B": {"Email": "y"}})
    states, now, known = await hub.catch_up(mark, {"A"})
    assert (states, known) == ({"A": {"Email": "s2"}}, True)
    assert now == hub.token
    states, _, known = await hub.catch_up("stranger-1", {"A"})
    assert known is False and states == {"A": {"Email": "s2", "Mailbox": "m1"}}
    states, _, known = await hub.catch_up(hub.token, {"A", "B"})
    assert (states, known) == ({}, True)
    await store.close()

    hub2, store2 = await open_hub(tmp_path / "db")
    assert hub2.token == now or hub2.last_seq >= hub.last_seq
    states, _, known = await hub2.catch_up(mark, {"A", "B"})
    assert known and states == {"A": {"Email": "s2"}, "B": {"Email": "y"}}
    await store2.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_publishes_share_a_commit_in_order(tmp_path: Path) -> None:
    """Group commit: publishes made while a write is in flight are written together,
    each with its own increasing seq, announced in seq order, each durable when it fires."""
    from twisted.internet import defer

    hub, store = await open_hub(tmp_path / "db")
    seen = Recorder()
    hub.subscribe(seen, ["A"])
    calls: list[int] = []
    original = store.record_changes_batch

    def counting(batch):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return original(batch)

    store.record_changes_batch = counting  # type: ignore[method-assign]
    results = await defer.gatherResults([
        defer.ensureDeferred(hub.publish({"A": {"Email": f"s{i}"}})) for i in range(50)])
    assert [c.seq for c in results] == list(range(1, 51))
    assert [c.seq for c in seen.changes] == list(range(1, 51))
    assert calls[0] == 1 and len(calls) < 50
    assert await store.current_states(["A"]) == {"A": {"Email": "s49"}}
    await store.close()


def test_failed_commit_fails_its_publishes_and_the_hub_recovers() -> None:
    """A failing write errbacks every publish in its batch; later publishes still work."""
    from twisted.internet import defer

    store = open_memory_store()
    hub = Hub(store)
    defer.ensureDeferred(hub.start())
    store.fail_next(RuntimeError("disk full"))
    failed = defer.ensureDeferred(hub.publish({"A": {"Email": "s1"}}))
    with pytest.raises(RuntimeError, match="disk full"):
        fired(failed)
    change = fired(defer.ensureDeferred(hub.publish({"A": {"Email": "s2"}})))
    assert change.seq == 1


def test_local_bus_provides_ibus() -> None:
    """verifyObject: the in-process bus implements IBus (the seam a cluster bus replaces)."""
    from zope.interface.verify import verifyObject

    from jmappushd.core.hub import IBus, LocalBus

    assert verifyObject(IBus, LocalBus())
