"""The hub: durable record, fan-out by account, catch-up tokens across restarts."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jmappushd.core.hub import Change, Hub, IBus, StateMap, restrict
from jmappushd.store.memory import MemoryStore
from jmappushd.store.sqlite import SQLiteStore
from tests.store_backends import fired, open_memory_store
from tests.support import log_into


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
    mark = hub.tokens.seal("u1", hub.last_seq)
    await hub.publish({"A": {"Email": "s2"}})
    await hub.publish({"B": {"Email": "y"}})
    states, now, known = await hub.catch_up(mark, {"A"}, "u1")
    assert (states, known) == ({"A": {"Email": "s2"}}, True)
    assert hub.tokens.open("u1", now) == hub.last_seq
    states, _, known = await hub.catch_up("stranger-1", {"A"}, "u1")
    assert known is False and states == {"A": {"Email": "s2", "Mailbox": "m1"}}
    states, _, known = await hub.catch_up(now, {"A", "B"}, "u1")
    assert (states, known) == ({}, True)
    await store.close()

    hub2, store2 = await open_hub(tmp_path / "db")
    assert hub2.tokens.open("u1", now) == hub.last_seq
    states, _, known = await hub2.catch_up(mark, {"A", "B"}, "u1")
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

    def counting(batch):
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


class HeldStore(MemoryStore):
    """The hub's store calls; each write waits until the test answers it (``commit``)."""

    def __init__(self) -> None:
        super().__init__()
        self.open()  # for the token key in its metadata
        self.seq = 0
        self.writes: list[tuple[list[StateMap], defer.Deferred[list[int]]]] = []
        self.raise_now = False

    def position(self) -> defer.Deferred[tuple[str, int]]:
        return defer.succeed(("ep", self.seq))

    def record_changes_batch(self, batch: Sequence[StateMap]) -> defer.Deferred[list[int]]:
        if self.raise_now:
            raise RuntimeError("store refused at once")
        d: defer.Deferred[list[int]] = defer.Deferred()
        self.writes.append((list(batch), d))
        return d

    def commit(self) -> None:
        batch, d = self.writes.pop(0)
        first = self.seq + 1
        self.seq += len(batch)
        d.callback(list(range(first, self.seq + 1)))


@implementer(IBus)
class ManualBus:
    """A bus the test drives: announcements are kept, delivery happens when told."""

    def __init__(self, fail_on: frozenset[int] = frozenset()) -> None:
        self.receiver: Callable[[Change], None] | None = None
        self.announced: list[Change] = []
        self.fail_on = fail_on

    def announce(self, change: Change) -> None:
        if change.seq in self.fail_on:
            raise RuntimeError(f"bus lost {change.seq}")
        self.announced.append(change)

    def set_receiver(self, receiver: Callable[[Change], None]) -> None:
        self.receiver = receiver

    def reach(self, seq: int) -> defer.Deferred[None]:
        return defer.succeed(None)

    def deliver(self, seq: int, changed: StateMap | None = None) -> None:
        assert self.receiver is not None
        self.receiver(Change(seq, changed or {"A": {"Email": f"s{seq}"}}))


def started_hub(bus: ManualBus, store: HeldStore | None = None) -> Hub:
    hub = Hub(store or HeldStore(), bus)
    done = defer.ensureDeferred(hub.start())
    assert done.called
    return hub


def logged_failures(hub: Hub) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    hub.log = Logger(observer=log_into(events))
    return events


def test_failing_bus_answers_every_publish_of_the_group_commit() -> None:
    """A bus raising on one change of a batch: every publish of that batch still fires
    with its (durable) Change, the failure is logged once with its seq, and the next
    batch is written and answered too."""
    store = HeldStore()
    hub = started_hub(ManualBus(fail_on=frozenset({2})), store)
    events = logged_failures(hub)
    first = defer.ensureDeferred(hub.publish({"A": {"Email": "s1"}}))
    batch = [defer.ensureDeferred(hub.publish({"A": {"Email": f"s{i}"}})) for i in (2, 3, 4)]
    store.commit()
    assert fired(first).seq == 1
    store.commit()
    assert [d.called for d in batch] == [True, True, True]
    assert [fired(d).seq for d in batch] == [2, 3, 4]
    assert [e["seq"] for e in events if e.get("log_failure")] == [2]
    later = defer.ensureDeferred(hub.publish({"A": {"Email": "s5"}}))
    store.commit()
    assert fired(later).seq == 5


def test_store_raising_at_once_fails_its_publishes_and_the_hub_goes_on() -> None:
    """A store that raises instead of returning a failed Deferred: the batch's publishes
    fail (none hangs) and the hub writes the next publish."""
    store = HeldStore()
    hub = started_hub(ManualBus(), store)
    store.raise_now = True
    failed = defer.ensureDeferred(hub.publish({"A": {"Email": "s1"}}))
    assert failed.called
    failure: list[Failure] = []
    failed.addErrback(failure.append)
    assert failure and failure[0].check(RuntimeError)
    store.raise_now = False
    later = defer.ensureDeferred(hub.publish({"A": {"Email": "s2"}}))
    store.commit()
    assert fired(later).seq == 1


def test_failing_listener_does_not_stop_the_others() -> None:
    """A listener raising inside fan-out is logged; listeners after it still get the change."""
    bus = ManualBus()
    hub = started_hub(bus)
    events = logged_failures(hub)
    hub.subscribe(Exploder(), ["A"])
    after = Recorder()
    hub.subscribe(after, ["A"])
    bus.deliver(1)
    assert [c.seq for c in after.changes] == [1]
    assert len([e for e in events if e.get("log_failure")]) == 1


def test_in_order_delivery_hands_listeners_the_change_itself() -> None:
    """The LocalBus case: the watermark follows each change and listeners get the very
    Change announced, with its own seq as position (no copy on the hot path)."""
    store = HeldStore()
    hub = Hub(store)
    defer.ensureDeferred(hub.start())
    seen = Recorder()
    hub.subscribe(seen, ["A"])
    published = defer.ensureDeferred(hub.publish({"A": {"Email": "s1"}}))
    store.commit()
    assert seen.changes == [fired(published)]
    assert seen.changes[0].position == 1 and hub.last_seq == 1


@pytest_twisted.ensureDeferred
async def test_watermark_waits_for_the_gap_to_close() -> None:
    """ES-10, WS-19: seq 2 before seq 1 is fanned out at once but the watermark (and
    every token's position: catch_up's, the change's) stays at 0 until seq 1 arrives,
    then jumps to 2."""
    bus = ManualBus()
    hub = started_hub(bus)
    seen = Recorder()
    hub.subscribe(seen, ["A"])
    bus.deliver(2)
    assert [c.seq for c in seen.changes] == [2]
    assert seen.changes[0].position == 0
    assert (hub.last_seq, hub.highest_seq) == (0, 2)
    _, now, _ = await hub.catch_up(hub.tokens.seal("u1", 0), ["A"], "u1")
    assert hub.tokens.open("u1", now) == 0
    bus.deliver(1)
    assert [c.seq for c in seen.changes] == [2, 1]
    assert seen.changes[1].position == 2
    assert (hub.last_seq, hub.highest_seq) == (2, 2)
    bus.deliver(3)
    assert seen.changes[2].position == 3


def test_tokens_given_to_listeners_never_claim_an_unseen_seq() -> None:
    """ES-10, WS-19: whatever the arrival order, the token handed out with a change stands for a
    position every seq up to which has already been delivered."""
    for seed in range(20):
        order = list(range(1, 41))
        random.Random(seed).shuffle(order)
        bus = ManualBus()
        hub = started_hub(bus)
        seen = Recorder()
        hub.subscribe(seen, ["A"])
        delivered: set[int] = set()
        for seq in order:
            bus.deliver(seq)
            delivered.add(seq)
            claimed = seen.changes[-1].position
            assert set(range(1, claimed + 1)) <= delivered, (seed, order, claimed)
            assert hub.last_seq == claimed
        assert hub.last_seq == hub.highest_seq == 40


class MemoryLog:
    """A change log to re-read: ``(seq, changed)`` entries, holes allowed."""

    def __init__(self, entries: list[tuple[int, StateMap]]) -> None:
        self.entries = entries
        self.asked: list[int] = []

    def changes_after(self, seq: int) -> defer.Deferred[Sequence[tuple[int, StateMap]]]:
        self.asked.append(seq)
        after: Sequence[tuple[int, StateMap]] = [e for e in self.entries if e[0] > seq]
        return defer.succeed(after)


@pytest_twisted.ensureDeferred
async def test_fill_gap_rereads_the_log_after_the_watermark() -> None:
    """A lost wake-up (seq 2 never delivered): fill_gap asks the log for everything after
    the watermark, fans out only what was never received (2 and 4, not 3 again), steps
    over a sequence hole (5) and moves the watermark to the log's end."""
    bus = ManualBus()
    hub = started_hub(bus)
    seen = Recorder()
    hub.subscribe(seen, ["A"])
    bus.deliver(1)
    bus.deliver(3)
    assert hub.last_seq == 1
    log = MemoryLog([(n, {"A": {"Email": f"s{n}"}}) for n in (1, 2, 3, 4, 6)])
    assert await hub.fill_gap(log) == 6
    assert log.asked == [1]
    assert [c.seq for c in seen.changes] == [1, 3, 2, 4, 6]
    assert [c.position for c in seen.changes] == [1, 1, 3, 4, 6]
    assert (hub.last_seq, hub.highest_seq) == (6, 6)
    assert await hub.fill_gap(log) == 6
    assert len(seen.changes) == 5


def test_changes_delivered_before_start_do_not_leave_a_gap() -> None:
    """A bus may deliver before the hub has read the store's position: once started at the
    durable position, what arrived up to it is settled and the next change is in order."""
    bus = ManualBus()
    store = HeldStore()
    store.seq = 3
    hub = Hub(store, bus)
    bus.deliver(2)
    bus.deliver(3)
    defer.ensureDeferred(hub.start())
    assert (hub.last_seq, hub.highest_seq) == (3, 3)
    seen = Recorder()
    hub.subscribe(seen, ["A"])
    bus.deliver(4)
    assert seen.changes[-1].position == 4 and hub.last_seq == hub.highest_seq == 4


def test_a_store_answering_at_once_still_announces_in_seq_order() -> None:
    """Nothing lost (SC-2, newest wins): the next group commit starts while a batch is
    being fanned out; a store that answers that next commit at once (re-entrantly) must
    not get its newer changes announced before the older batch, or listeners, which keep
    the state that arrives last, would end on an old state."""
    store = open_memory_store()
    hub = Hub(store)
    defer.ensureDeferred(hub.start())
    seen: list[tuple[int, str]] = []

    class Listener:
        def change_published(self, change: Change) -> None:
            seen.append((change.seq, change.changed["A"]["Email"]))

    hub.subscribe(Listener(), ["A"])
    store.hold()
    done = [defer.ensureDeferred(hub.publish({"A": {"Email": f"s{i}"}})) for i in (1, 2, 3)]
    store.release()
    assert all(d.called for d in done)
    assert seen == [(1, "s1"), (2, "s2"), (3, "s3")]
    assert hub.last_seq == 3


def test_a_failed_start_fails_waiting_publishes_and_catch_ups() -> None:
    """If the store cannot tell the hub its position, publishes and catch-ups that
    waited for the start fail with that error instead of hanging."""
    store = open_memory_store()
    hub = Hub(store)
    publish = defer.ensureDeferred(hub.publish({"A": {"Email": "s1"}}))
    catch_up = defer.ensureDeferred(hub.catch_up(None, ["A"], "u1"))
    store.fail_next(RuntimeError("database unavailable"))
    start = defer.ensureDeferred(hub.start())
    for d in (start, publish, catch_up):
        failures: list[Failure] = []
        d.addErrback(failures.append)
        assert failures and failures[0].check(RuntimeError), d
