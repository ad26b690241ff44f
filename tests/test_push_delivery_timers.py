"""Idle is free: the delivery scheduler ticks only while something waits (DESIGN: idle is
free; issue 10, defect 4).

An idle service owns one timer, armed at the earliest expiry or verification deadline;
the tick runs while something is throttled, due for retry or waiting out a Retry-After.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from jmappushd.transports.webpush.schedule import Scheduler
from tests.push_fakes import Harness


def times(h: Harness) -> list[float]:
    """When each delayed call on the clock is due, in order."""
    return sorted(call.getTime() for call in h.clock.getDelayedCalls())


def test_no_subscription_no_timer() -> None:
    """A service with no subscription owns no timer at all."""
    h = Harness()
    h.start()
    assert h.clock.getDelayedCalls() == []


def test_idle_subscriptions_own_one_deadline_timer() -> None:
    """Idle verified subscriptions cost one timer, at the earliest expiry; no tick."""
    h = Harness()
    now = h.clock.seconds()
    h.start(h.record("S1", expires=now + 5000), h.record("S2", expires=now + 3000),
            h.record("S3", expires=now + 9000))
    assert times(h) == [now + 3000]
    h.clock.advance(3000)
    assert h.store.deleted == ["S2"]
    assert times(h) == [now + 5000]  # re-armed at the next deadline


def test_an_earlier_deadline_moves_the_timer() -> None:
    """A new unverified subscription's verification deadline, earlier than every expiry,
    re-arms the one timer; once it passed, the timer goes back to the expiry."""
    h = Harness(push_verify_timeout=60_000)
    now = h.clock.seconds()
    h.start(h.record("S1"))
    record = h.record("S2", verified=False)
    h.delivery.created(record)
    h.transport.pop().answer(201)
    assert times(h) == [now + 60]
    h.clock.advance(60)
    assert h.store.deleted == ["S2"]
    assert times(h) == [record.expires]


def test_a_throttled_change_arms_the_tick_and_delivery_stops_it() -> None:
    """A change waiting out push-throttle starts the tick; once it is delivered and
    nothing else waits, the tick stops."""
    h = Harness(push_throttle=5_000)
    h.start(h.record())
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(201)
    assert len(h.clock.getDelayedCalls()) == 1  # delivered at once: no tick
    h.publish({"A": {"Email": "s2"}})
    assert len(h.clock.getDelayedCalls()) == 2  # throttled: the tick runs
    h.tick_until(5)
    h.transport.pop().answer(201)
    h.tick_until(2)
    assert len(h.clock.getDelayedCalls()) == 1


def test_a_retry_runs_the_tick_until_delivered() -> None:
    """A failed attempt arms the tick for its retry; the delivered retry leaves it off."""
    h = Harness(push_throttle=0, push_attempt_interval=10_000)
    h.start(h.record())
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(500)
    assert len(h.clock.getDelayedCalls()) == 2
    h.tick_until(10)
    h.transport.pop().answer(201)
    h.tick_until(1)
    assert len(h.clock.getDelayedCalls()) == 1


def test_stop_leaves_no_delayed_call() -> None:
    """stop() with a tick armed, a deadline timer and a POST in flight leaves the clock
    empty, and nothing is armed again afterwards."""
    h = Harness(push_throttle=5_000)
    h.start(h.record("S1"), h.record("S2", verified=False))
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(201)
    h.publish({"A": {"Email": "s2"}})
    assert len(h.clock.getDelayedCalls()) == 2
    done = defer.ensureDeferred(h.delivery.stop())
    assert done.called and h.clock.getDelayedCalls() == []
    h.publish({"A": {"Email": "s3"}})
    assert h.clock.getDelayedCalls() == []


def test_scheduler_survives_a_failing_callback() -> None:
    """An exception handling one item is logged; the other items are handled and the
    tick keeps running while they stay scheduled."""
    clock = Clock()
    seen: list[str] = []

    def on_due(item: str, now: float) -> None:
        seen.append(item)
        if item == "bad":
            raise RuntimeError("boom")

    scheduler: Scheduler[str] = Scheduler(clock, 1.0, on_due, lambda key, now: None)
    scheduler.add("bad")
    scheduler.add("good")
    clock.advance(1)
    assert sorted(seen) == ["bad", "good"]
    assert len(clock.getDelayedCalls()) == 1
    scheduler.discard("bad")
    scheduler.discard("good")
    clock.advance(1)
    assert clock.getDelayedCalls() == []
    scheduler.stop()


def test_scheduler_never_arms_two_ticks() -> None:
    """An item scheduled again from inside the tick does not add a second tick timer."""
    clock = Clock()
    scheduler: Scheduler[str] = Scheduler(
        clock, 1.0, lambda item, now: scheduler.add(item), lambda key, now: None)
    scheduler.add("x")
    for _ in range(3):
        clock.advance(1)
        assert len(clock.getDelayedCalls()) == 1
    scheduler.stop()
    assert clock.getDelayedCalls() == []
