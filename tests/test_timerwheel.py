"""The timer wheel: per-connection timers on one reactor timer, never early, idle is free."""

from __future__ import annotations

from functools import partial

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from jmappushd.net.timerwheel import TimerWheel
from tests.support import log_into


def test_fires_at_the_next_tick_never_early() -> None:
    """A timer runs at its due time rounded up to the resolution: not before."""
    clock = Clock()
    wheel = TimerWheel(clock, resolution=1.0)
    fired: list[float] = []
    wheel.call_later(2.3, lambda: fired.append(clock.seconds()))
    clock.advance(2.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [3.0]


def test_exact_due_times_are_kept() -> None:
    """Due times on a tick boundary (float sums included) fire exactly then."""
    clock = Clock()
    wheel = TimerWheel(clock, resolution=0.1)
    fired: list[str] = []
    clock.advance(0.25)
    wheel.call_later(4.75, lambda: fired.append("ping"))
    clock.advance(4.5)
    assert fired == []
    clock.advance(0.25)
    assert fired == ["ping"]


def test_thousands_of_timers_share_one_reactor_call() -> None:
    """However many timers are pending, the reactor holds one DelayedCall for them."""
    clock = Clock()
    wheel = TimerWheel(clock, resolution=0.5)
    fired: list[int] = []
    for i in range(5000):
        wheel.call_later(1 + (i % 60), partial(fired.append, i))
    assert len(clock.getDelayedCalls()) == 1 and len(wheel) == 5000
    clock.pump([1.0] * 61)
    assert sorted(fired) == list(range(5000))
    assert clock.getDelayedCalls() == [] and len(wheel) == 0


def test_cancel_and_active() -> None:
    """Cancelled timers never run; cancel is idempotent and harmless after the call;
    with nothing pending the wheel keeps no reactor timer (idle is free)."""
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[str] = []
    a = wheel.call_later(1, lambda: fired.append("a"))
    b = wheel.call_later(2, lambda: fired.append("b"))
    assert a.active() and b.active()
    a.cancel()
    a.cancel()
    assert not a.active() and len(clock.getDelayedCalls()) == 1
    clock.advance(2)
    assert fired == ["b"] and not b.active()
    b.cancel()
    c = wheel.call_later(5, lambda: fired.append("c"))
    c.cancel()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert fired == ["b"]


def test_an_earlier_timer_moves_the_shared_call_forward() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[str] = []
    wheel.call_later(30, lambda: fired.append("late"))
    wheel.call_later(5, lambda: fired.append("early"))
    clock.advance(5)
    assert fired == ["early"]
    clock.advance(25)
    assert fired == ["early", "late"]


def test_a_call_scheduled_far_ahead_from_a_timer_does_not_delay_the_next_bucket() -> None:
    """A heartbeat re-arming itself 5 s ahead must not push back timers due sooner (the
    shared reactor timer is armed for the earliest bucket after every turn)."""
    clock = Clock()
    wheel = TimerWheel(clock, resolution=0.1)
    fired: list[tuple[str, float]] = []

    def first() -> None:
        fired.append(("a", clock.seconds()))
        wheel.call_later(100, lambda: fired.append(("z", 0.0)))

    wheel.call_later(1, first)
    wheel.call_later(1.5, lambda: fired.append(("b", clock.seconds())))
    wheel.call_later(2, lambda: fired.append(("c", clock.seconds())))
    clock.pump([0.5] * 4)
    assert fired == [("a", 1.0), ("b", 1.5), ("c", 2.0)]
    assert len(clock.getDelayedCalls()) == 1  # armed for the call 100 s ahead


def test_one_turn_runs_what_is_due_in_due_order() -> None:
    """After a long stall every overdue timer runs in one turn, earliest first; a timer
    cancelled by an earlier one in the same turn does not run."""
    clock = Clock()
    wheel = TimerWheel(clock, resolution=1.0)
    fired: list[str] = []
    victim = wheel.call_later(3, lambda: fired.append("victim"))
    wheel.call_later(3, lambda: fired.append("third"))
    wheel.call_later(2, lambda: fired.append("second"))

    def first() -> None:
        fired.append("first")
        victim.cancel()

    wheel.call_later(1, first)
    clock.advance(100)
    assert fired == ["first", "second", "third"]


def test_a_timer_rearmed_from_its_own_call_keeps_its_rhythm() -> None:
    """The heartbeat pattern: each call schedules the next one interval later."""
    clock = Clock()
    wheel = TimerWheel(clock)
    runs: list[float] = []

    def beat() -> None:
        runs.append(clock.seconds())
        if len(runs) < 4:
            wheel.call_later(5, beat)

    wheel.call_later(1, beat)
    clock.pump([1.0] * 30)
    assert runs == [1.0, 6.0, 11.0, 16.0]
    assert clock.getDelayedCalls() == []


def test_a_failing_timer_is_logged_and_the_others_still_run() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    logged: list[dict[str, object]] = []
    wheel.log = Logger(observer=log_into(logged))
    fired: list[str] = []
    wheel.call_later(1, lambda: 1 / 0)
    wheel.call_later(1, lambda: fired.append("ok"))
    clock.advance(1)
    assert fired == ["ok"]
    (event,) = logged
    assert event["log_failure"].check(ZeroDivisionError)  # type: ignore[attr-defined]


def test_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TimerWheel(Clock(), resolution=0)
