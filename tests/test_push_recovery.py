"""Web Push recovery at start: merged with live changes by rule, not by the store's timing.

The recovery query (``changes_since``) is held open by the test while live changes arrive,
as a store that does not answer in call order (a cluster store, a connection pool) may do.
"""

from __future__ import annotations

from collections.abc import Collection

from twisted.internet import defer

from jmappushd.core.hub import Change
from tests.push_fakes import Harness
from tests.store_backends import fired

Answer = dict[str, dict[str, str]]


def hold_recovery(h: Harness) -> list[tuple[defer.Deferred[Answer], Answer]]:
    """Make ``changes_since`` answer from a snapshot taken at call time, but only later."""
    held: list[tuple[defer.Deferred[Answer], Answer]] = []
    snapshot = h.store.changes_since

    def later(seq: int, account_ids: Collection[str]) -> defer.Deferred[Answer]:
        d: defer.Deferred[Answer] = defer.Deferred()
        held.append((d, fired(snapshot(seq, account_ids))))
        return d

    h.store.changes_since = later  # type: ignore[method-assign]
    return held


def test_live_change_during_recovery_is_not_overwritten_by_the_answer() -> None:
    """Nothing lost (C-WP durability, SC-2): a state merged live while the recovery query
    runs wins over the older answer for that account/type; the answer's other states are
    still recovered."""
    h = Harness(push_throttle=5_000)
    record = h.record()
    h.store.record_changes({"A": {"Email": "old", "Contact": "c1"}})  # while the daemon was down
    h._build()  # the restarted daemon's hub starts at seq 1
    held = hold_recovery(h)
    h.start(record)
    assert len(held) == 1, "the recovery query is in flight"
    h.publish({"A": {"Mailbox": "m1"}})
    first = h.transport.pop()
    assert h.decrypt(first)["changed"] == {"A": {"Mailbox": "m1"}}
    h.publish({"A": {"Email": "new"}})  # merged, waiting for the POST in flight
    d, answer = held.pop()
    d.callback(answer)  # {"A": {"Email": "old", "Contact": "c1"}}: older than the live Email
    first.answer(201)
    h.tick_until(10)
    second = h.transport.pop()
    assert h.decrypt(second)["changed"] == {"A": {"Email": "new", "Contact": "c1"}}
    second.answer(201)
    h.tick_until(10)
    assert h.transport.calls == []


def test_recovery_without_live_changes_sends_the_answer() -> None:
    """Durability: with no live change meanwhile, the held answer is merged and sent."""
    h = Harness(push_throttle=5_000)
    record = h.record()
    h.store.record_changes({"A": {"Email": "s1"}})
    h._build()
    held = hold_recovery(h)
    h.start(record)
    assert h.transport.calls == []
    d, answer = held.pop()
    d.callback(answer)
    assert h.decrypt(h.transport.pop())["changed"] == {"A": {"Email": "s1"}}


def test_recorded_position_never_passes_a_gap() -> None:
    """A change the bus delivers above a gap is pushed at once, but the durable position
    (last_sent_seq) stays at the hub's contiguous watermark until the gap closes, so a
    restart re-reads the missing change instead of skipping it."""
    h = Harness(push_throttle=0)
    h.start(h.record())
    bus = h.hub._bus
    bus.announce(Change(2, {"A": {"Email": "s2"}}))  # seq 1 not seen
    call = h.transport.pop()
    assert h.decrypt(call)["changed"] == {"A": {"Email": "s2"}}
    call.answer(201)
    assert h.store.last_saved("S1").last_sent_seq == 0
    bus.announce(Change(1, {"A": {"Mailbox": "m1"}}))
    call = h.transport.pop()
    assert h.decrypt(call)["changed"] == {"A": {"Mailbox": "m1"}}
    call.answer(201)
    assert h.store.last_saved("S1").last_sent_seq == 2
