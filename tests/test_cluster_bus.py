"""The cluster bus (jmappushd/core/logbus.py) in memory: several hubs on one shared log,
wake-ups as mere hints, reads after the contiguous watermark, a pruned horizon healed
from the states table. Time is a task.Clock."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pytest_twisted
from twisted.internet import defer, task

from jmappushd.core.hub import Change, Hub, StateMap
from jmappushd.core.logbus import POLL_INTERVAL, LogBus
from jmappushd.store.memory import MemoryStore
from tests.support import log_into


class SharedLog:
    """One database for several hubs: a MemoryStore plus the ordered log and its pruning."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.log: list[tuple[int, StateMap]] = []
        self.seq_of: dict[tuple[str, str], int] = {}
        self.fail_reads: Exception | None = None
        self.held: list[defer.Deferred[None]] | None = None
        self.reads = 0
        self.answering: defer.Deferred[None] | None = None  # a publish not yet answered

    async def open(self) -> None:
        await self.store.open()

    # The IStateLog part the hubs use.
    def position(self) -> defer.Deferred[tuple[str, int]]:
        return self.store.position()

    def record_changes_batch(self, batch: Sequence[StateMap]) -> defer.Deferred[list[int]]:
        d = self.store.record_changes_batch(batch)

        def logged(seqs: list[int]) -> list[int]:
            for seq, changed in zip(seqs, batch, strict=True):
                self.log.append((seq, {a: dict(t) for a, t in changed.items()}))
                for account, types in changed.items():
                    for name in types:
                        self.seq_of[(account, name)] = seq
            return seqs

        return d.addCallback(logged)

    def current_states(self, account_ids: Collection[str]
                       ) -> defer.Deferred[dict[str, dict[str, str]]]:
        return self.store.current_states(account_ids)

    def changes_since(self, seq: int, account_ids: Collection[str]
                      ) -> defer.Deferred[dict[str, dict[str, str]]]:
        return self.store.changes_since(seq, account_ids)

    # The ClusterLog part the bus reads.
    def changes_after(self, seq: int, limit: int = 10_000
                      ) -> defer.Deferred[Sequence[tuple[int, StateMap]]]:
        self.reads += 1
        if self.fail_reads is not None:
            return defer.fail(self.fail_reads)
        entries = [e for e in self.log if e[0] > seq][:limit]
        if self.held is None:
            return defer.succeed(entries)
        gate: defer.Deferred[None] = defer.Deferred()
        self.held.append(gate)
        return gate.addCallback(lambda _: entries)

    def settled(self) -> defer.Deferred[None]:
        if self.answering is None:
            return defer.succeed(None)
        settled: defer.Deferred[None] = defer.Deferred()
        self.answering.addBoth(lambda _: settled.callback(None))
        return settled

    def states_changed(self, after: int, upto: int
                       ) -> defer.Deferred[dict[str, dict[str, str]]]:
        out: dict[str, dict[str, str]] = {}
        newest: dict[tuple[str, str], str] = {}
        for _, changed in self.log_before_prune:
            for account, types in changed.items():
                for name, state in types.items():
                    newest[(account, name)] = state
        for (account, name), seq in self.seq_of.items():
            if after < seq <= upto:
                out.setdefault(account, {})[name] = newest[(account, name)]
        return defer.succeed(out)

    log_before_prune: list[tuple[int, StateMap]] = []

    def prune(self, keep: int) -> None:
        self.log_before_prune = list(self.log)
        del self.log[:-keep]


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def change_published(self, change: Change) -> None:
        self.changes.append(change)

    @property
    def seqs(self) -> list[int]:
        return [c.seq for c in self.changes]


async def node(shared: SharedLog, clock: task.Clock, **kwargs: int) -> tuple[Hub, LogBus, Recorder]:
    bus = LogBus(shared, clock, **kwargs)
    hub = Hub(shared, bus, keys=shared.store)  # type: ignore[arg-type]
    bus.attach(hub)
    await hub.start()
    recorder = Recorder()
    hub.subscribe(recorder, ["A", "B"])
    return hub, bus, recorder


@pytest_twisted.ensureDeferred
async def test_a_publish_on_one_node_reaches_the_others_on_a_wake_up() -> None:
    """A change published on node A is read from the log by node B when B is woken with its
    seq, in seq order, with its own seq as the position (a token may stand for it)."""
    shared, clock = SharedLog(), task.Clock()
    await shared.open()
    a, _bus_a, on_a = await node(shared, clock)
    b, bus_b, on_b = await node(shared, clock)
    first = await a.publish({"A": {"Email": "s1"}})
    second = await a.publish({"B": {"Email": "t1"}})
    assert on_a.seqs == [1, 2] and on_b.seqs == []
    bus_b.wake(second.seq)
    assert on_b.seqs == [1, 2] and b.last_seq == 2
    assert [c.position for c in on_b.changes] == [1, 2]
    assert on_b.changes[0].changed == first.changed


@pytest_twisted.ensureDeferred
async def test_own_publish_is_announced_at_once_and_never_delivered_twice() -> None:
    """A node's own notification comes back after its publish: the watermark is past it, so
    it reads nothing; even a forced read from the watermark delivers nothing again."""
    shared, clock = SharedLog(), task.Clock()
    await shared.open()
    a, bus_a, on_a = await node(shared, clock)
    change = await a.publish({"A": {"Email": "s1"}})
    assert on_a.seqs == [1]
    reads = shared.reads
    bus_a.wake(change.seq)
    assert shared.reads == reads  # nothing to read: not even a query
    bus_a.wake(None)
    assert on_a.seqs == [1] and a.last_seq == 1


@pytest_twisted.ensureDeferred
async def test_a_wake_up_that_overtakes_the_own_commit_answer_waits_for_it() -> None:
    """The commit's notification usually comes before the publish's answer: the bus waits
    until the node's publishes are answered, then reads nothing for its own seq; a seq of
    another node woken meanwhile is still read after the wait."""
    shared, clock = SharedLog(), task.Clock()
    await shared.open()
    a, bus_a, on_a = await node(shared, clock)
    b, _, _ = await node(shared, clock)
    answering = shared.answering = defer.Deferred()
    change = await a.publish({"A": {"Email": "s1"}})  # logged; its "answer" is held below
    a.last_seq = 0  # as if the answer had not reached the hub yet
    reads = shared.reads
    bus_a.wake(change.seq)
    assert shared.reads == reads  # waiting for the answer, not reading
    a.last_seq = 1  # the answer arrives and the hub has the change
    answering.callback(None)
    assert shared.reads == reads and on_a.seqs == [1]
    # Another node's publish woken for while this node's publish is being answered.
    answering = shared.answering = defer.Deferred()
    other = await b.publish({"B": {"Email": "t2"}})
    bus_a.wake(other.seq)
    assert shared.reads == reads
    answering.callback(None)
    assert shared.reads == reads + 1 and on_a.seqs == [1, 2]


@pytest_twisted.ensureDeferred
async def test_the_periodic_read_heals_a_lost_wake_up() -> None:
    """With no notification at all, node B's tick (one timer per node) reads the log."""
    shared, clock = SharedLog(), task.Clock()
    await shared.open()
    a, _, _ = await node(shared, clock)
    _b, bus_b, on_b = await node(shared, clock)
    bus_b.start()
    await a.publish({"A": {"Email": "s1"}})
    assert on_b.seqs == []
    clock.advance(POLL_INTERVAL)
    assert on_b.seqs == [1]
    assert len(clock.getDelayedCalls()) == 1  # the one tick
    await bus_b.stop()
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_one_read_at_a_time_and_one_more_for_wake_ups_during_it() -> None:
    """Wake-ups during a read make exactly one more read after it, which finds what was
    logged meanwhile; a change published locally during the read is not delivered twice."""
    shared, clock = SharedLog(), task.Clock()
    await shared.open()
    a, _, _ = await node(shared, clock)
    b, bus_b, on_b = await node(shared, clock)
    await a.publish({"A": {"Email": "s1"}})
    shared.held = []
    bus_b.wake(1)
    assert len(shared.held) == 1
    await a.publish({"A": {"Email": "s2"}})
    await b.publish({"B": {"Email": "t3"}})  # B's own, above the gap it has not read yet
    bus_b.wake(2)
    bus_b.wake(3)
    assert len(shared.held) == 1
    shared.held.pop().callback(None)
    assert len(shared.held) == 1  # the one extra read
    shared.held.pop().callback(None)
    assert shared.held == []
    assert sorted(on_b.seqs) == [1, 2, 3] and len(on_b.seqs) == 3
    assert b.last_seq == 3


@pytest_twisted.ensureDeferred
async def test_a_failing_read_is_logged_once_and_healed_by_the_next() -> None:
    """A database outage: the read fails (one warning for the outage, not one per tick);
    the first read that works delivers everything missed, in order, and says so."""
    shared, clock = SharedLog(), task.Clock()
    await shared.open()
    a, _, _ = await node(shared, clock)
    _b, bus_b, on_b = await node(shared, clock)
    events: list[dict[str, object]] = []
    from twisted.logger import globalLogPublisher

    observer = log_into(events)
    globalLogPublisher.addObserver(observer)
    try:
        bus_b.start()
        shared.fail_reads = ConnectionError("server closed the connection")
        for n in range(3):
            await a.publish({"A": {"Email": f"s{n}"}})
            clock.advance(POLL_INTERVAL)
        assert on_b.seqs == []
        shared.fail_reads = None
        clock.advance(POLL_INTERVAL)
        assert on_b.seqs == [1, 2, 3]
    finally:
        globalLogPublisher.removeObserver(observer)
        await bus_b.stop()
    texts = [str(e.get("log_format")) for e in events]
    assert sum("reading the change log failed" in t for t in texts) == 1
    assert sum("reading the change log again" in t for t in texts) == 1


@pytest_twisted.ensureDeferred
async def test_a_full_page_is_followed_by_the_next_at_once() -> None:
    """Reads are paged; one wake-up reads page after page until the log is exhausted."""
    shared, clock = SharedLog(), task.Clock()
    await shared.open()
    a, _, _ = await node(shared, clock)
    _b, bus_b, on_b = await node(shared, clock, page_size=2)
    for n in range(5):
        await a.publish({"A": {"Email": f"s{n}"}})
    bus_b.wake(5)
    assert on_b.seqs == [1, 2, 3, 4, 5]


@pytest_twisted.ensureDeferred
async def test_behind_the_pruned_horizon_the_missed_states_arrive_merged() -> None:
    """A node further behind than the log keeps gets, for the pruned part, the newest state
    of every pair last changed there (one merged change), then the kept entries: nothing
    lost, nothing older than what the others saw, and its watermark reaches the end."""
    shared, clock = SharedLog(), task.Clock()
    await shared.open()
    a, _, _ = await node(shared, clock)
    b, bus_b, on_b = await node(shared, clock)
    await a.publish({"A": {"Email": "s1", "Mailbox": "m1"}})
    await a.publish({"A": {"Email": "s2"}})
    await a.publish({"B": {"Email": "t3"}})
    await a.publish({"A": {"Mailbox": "m4"}})
    await a.publish({"B": {"Email": "t5"}})
    shared.prune(keep=2)  # seqs 4 and 5 kept
    bus_b.wake(5)
    assert on_b.seqs == [3, 4, 5]
    # (A, Email) last changed at 2; (A, Mailbox) and (B, Email) changed again in the kept log.
    assert on_b.changes[0].changed == {"A": {"Email": "s2"}}
    assert on_b.changes[1].changed == {"A": {"Mailbox": "m4"}}
    assert b.last_seq == 5


@pytest_twisted.ensureDeferred
async def test_a_token_from_a_node_ahead_reads_up_to_it_and_resumes_with_a_delta() -> None:
    """A client's token from node A names a seq node B has not read yet (its wake-up is
    still on the way): B's catch-up reads the log up to it first and answers a delta
    (``known``), not a full resync; a token past the end of the log still resyncs."""
    shared, clock = SharedLog(), task.Clock()
    await shared.open()
    a, _bus_a, _ = await node(shared, clock)
    b, _bus_b, on_b = await node(shared, clock)
    await a.publish({"A": {"Email": "s1"}})
    token = a.tokens.seal("u1", a.last_seq)
    await a.publish({"A": {"Mailbox": "m1"}})
    assert b.last_seq == 0
    states, now_token, known = await b.catch_up(token, ["A"], "u1")
    assert known and states == {"A": {"Mailbox": "m1"}}
    assert b.last_seq == 2 and b.tokens.open("u1", now_token) == 2
    assert on_b.seqs == [1, 2]  # what the read found went live too
    future = a.tokens.seal("u1", 99)
    states, _, known = await b.catch_up(future, ["A"], "u1")
    assert not known and states == {"A": {"Email": "s1", "Mailbox": "m1"}}
