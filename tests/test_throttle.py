"""Clock-driven tests of the shared leading-edge, coalescing throttle (SC-2)."""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.task import Clock

from jmappushd.core.throttle import CoalescingThrottle

Sent = list[tuple[Mapping[str, Mapping[str, str]], str]]


def make(interval: float) -> tuple[Clock, CoalescingThrottle, Sent]:
    clock = Clock()
    sent: Sent = []
    throttle = CoalescingThrottle(clock, interval, lambda c, t: sent.append((c, t)))
    return clock, throttle, sent


def test_first_change_goes_out_at_once() -> None:
    """Leading edge: a change after a quiet spell is flushed immediately, no timer left."""
    clock, throttle, sent = make(1.0)
    throttle.offer({"A": {"Email": "s1"}}, "t1")
    assert sent == [({"A": {"Email": "s1"}}, "t1")]
    assert not clock.getDelayedCalls()


def test_changes_in_one_window_merge_into_one_event() -> None:
    """SC-2: N changes inside a window → one flush with the newest states, on time."""
    clock, throttle, sent = make(1.0)
    throttle.offer({"A": {"Email": "s1"}}, "t1")
    clock.advance(0.2)
    for i in range(2, 12):
        throttle.offer({"A": {"Email": f"s{i}"}, "B": {"Mailbox": f"m{i}"}}, f"t{i}")
    throttle.offer({"A": {"Thread": "x"}}, "t12")
    assert len(sent) == 1
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.79)
    assert len(sent) == 1
    clock.advance(0.01)
    assert sent[1] == ({"A": {"Email": "s11", "Thread": "x"}, "B": {"Mailbox": "m11"}}, "t12")
    assert not clock.getDelayedCalls()


def test_next_window_after_a_quiet_spell_is_immediate_again() -> None:
    """After a full quiet window the next change is not delayed."""
    clock, throttle, sent = make(1.0)
    throttle.offer({"A": {"Email": "s1"}}, "t1")
    clock.advance(5)
    throttle.offer({"A": {"Email": "s2"}}, "t2")
    assert [t for _, t in sent] == ["t1", "t2"]


def test_zero_interval_disables_throttling() -> None:
    """0 = off: every change is flushed at once."""
    clock, throttle, sent = make(0)
    for i in range(5):
        throttle.offer({"A": {"Email": f"s{i}"}}, f"t{i}")
    assert len(sent) == 5 and not clock.getDelayedCalls()


def test_pause_holds_and_merges_until_resume() -> None:
    """A slow reader: while paused nothing is flushed and pending stays one entry per pair."""
    _clock, throttle, sent = make(0)
    throttle.pause()
    for i in range(1000):
        throttle.offer({"A": {"Email": f"s{i}"}}, f"t{i}")
    assert sent == [] and throttle.pending == {"A": {"Email": "s999"}}
    throttle.resume()
    assert sent == [({"A": {"Email": "s999"}}, "t999")]


def test_cancel_leaves_no_timer() -> None:
    """Cancelling a connection's throttle removes its pending timer."""
    clock, throttle, sent = make(1.0)
    throttle.offer({"A": {"Email": "s1"}}, "t1")
    throttle.offer({"A": {"Email": "s2"}}, "t2")
    assert clock.getDelayedCalls()
    throttle.cancel()
    assert not clock.getDelayedCalls()
    clock.advance(10)
    assert len(sent) == 1
