"""Unexpected errors never wedge a subscription; failing notifications back off (issue 10,
defects 2 and 3; C-WP-2).

On a Clock with the fake transport and store; the back-off's random factor is injected
(``Harness(jitter=...)``), 0.0 by default: every delay is half its nominal value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from jmappushd.transports.webpush import ece, payload
from jmappushd.transports.webpush.policy import backoff_delay
from tests.push_fakes import Harness


def fail_once(real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, except that its first call raises."""
    calls = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("unexpected")
        return real(*args, **kwargs)

    return wrapper


def assert_failed_then_retried_and_delivered(h: Harness) -> None:
    """The broken attempt counts as a failure, the retry goes out an interval later."""
    assert h.transport.calls == []
    sub = h.delivery.get("S1")
    assert sub is not None and not sub.busy and sub.request is None
    assert h.metric("jmappushd_push_deliveries_total", kind="state", outcome="error") == 1
    assert h.store.last_saved("S1").attempts == 1
    h.publish({"A": {"Mailbox": "m1"}})  # merged into the retry
    h.tick_until(9)
    assert h.transport.calls == []
    h.tick_until(1)
    call = h.transport.pop()
    assert h.decrypt(call)["changed"] == {"A": {"Email": "s1", "Mailbox": "m1"}}
    call.answer(201)
    assert h.store.last_saved("S1").pending == {}
    h.publish({"A": {"Email": "s2"}})
    assert h.decrypt(h.transport.pop())["changed"] == {"A": {"Email": "s2"}}


def test_encryption_error_is_a_failed_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 2: encryption raising once does not wedge the subscription: the attempt is
    counted as an error, retried push-attempt-interval later and delivered."""
    h = Harness(push_throttle=0, push_attempt_interval=10_000)
    h.start(h.record())
    monkeypatch.setattr(ece, "encrypt", fail_once(ece.encrypt))
    h.publish({"A": {"Email": "s1"}})
    assert_failed_then_retried_and_delivered(h)


def test_header_error_is_a_failed_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 2: building the headers (the VAPID signature) raising once is a failed
    attempt, retried and delivered."""
    h = Harness(push_throttle=0, push_attempt_interval=10_000)
    h.start(h.record())
    monkeypatch.setattr(h.keyring, "signer", fail_once(h.keyring.signer))
    h.publish({"A": {"Email": "s1"}})
    assert_failed_then_retried_and_delivered(h)


def test_error_outside_the_sender_is_a_failed_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 2: an exception in the delivery's own part of the send path (splitting the
    payload) frees the subscription and counts as a failed attempt."""
    h = Harness(push_throttle=0, push_attempt_interval=10_000)
    h.start(h.record())
    monkeypatch.setattr(payload, "split_state_change", fail_once(payload.split_state_change))
    h.publish({"A": {"Email": "s1"}})
    assert_failed_then_retried_and_delivered(h)


def test_verification_error_frees_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PushVerification whose encryption raises is counted as an error and its slot is
    given back (it is not retried, C-PS-9)."""
    h = Harness(push_throttle=0, max_in_flight=1)
    h.start(h.record("S1"))
    monkeypatch.setattr(ece, "encrypt", fail_once(ece.encrypt))
    h.delivery.created(h.record("NEW", verified=False))
    assert h.metric("jmappushd_push_deliveries_total", kind="verification",
                    outcome="error") == 1
    h.publish({"A": {"Email": "s1"}})
    assert len(h.transport.calls) == 1


# -- back-off between notifications (defect 3) --


def drop_one(h: Harness) -> None:
    """Fail the POST in flight (push-attempts-max = 1: the notification is dropped)."""
    h.transport.pop().answer(500)


def wait_for_post(h: Harness, limit: float = 10_000) -> float:
    """Publish a change now; seconds until its POST starts."""
    start = h.clock.seconds()
    h.publish({"A": {"Email": f"s{start}"}})
    step = h.config.push_retry_interval_s
    while not h.transport.calls:
        assert h.clock.seconds() - start < limit, "no POST"
        h.clock.advance(step)
    return h.clock.seconds() - start


def backoff_harness(**config: Any) -> Harness:
    settings: dict[str, Any] = {"push_throttle": 0, "push_attempts_max": 1,
                                "push_attempt_interval": 10_000, "push_backoff_max": 60_000,
                                "failing_give_up": 86_400}
    settings.update(config)
    h = Harness(**settings)
    h.start(h.record())
    return h


def test_dropped_notifications_back_off_growing_and_capped() -> None:
    """Defect 3: after each dropped notification the next waits a delay that doubles
    (base push-attempt-interval 10 s, cap push-backoff-max 60 s, jitter factor 0.5)."""
    h = backoff_harness()
    assert wait_for_post(h) == 0
    spacings = []
    for _ in range(6):
        drop_one(h)
        spacings.append(wait_for_post(h))
    assert spacings == [5, 10, 20, 30, 30, 30]
    assert h.metric("jmappushd_push_dropped_total", reason="attempts") == 6


def test_attempts_within_a_notification_keep_their_interval() -> None:
    """The back-off spaces notifications, not the attempts of one: those stay
    push-attempt-interval apart."""
    h = backoff_harness(push_attempts_max=3)
    wait_for_post(h)
    for _ in range(3):  # a first notification, dropped: back-off 5 s
        h.transport.pop().answer(500)
        h.tick_until(10)
    assert h.transport.calls == []
    assert wait_for_post(h) == 0  # 30 s later: the back-off is over
    h.transport.pop().answer(500)
    h.tick_until(9)
    assert h.transport.calls == []
    h.tick_until(1)
    assert h.transport.calls


def test_success_resets_the_back_off() -> None:
    """A delivery forgets the failures: the next drop backs off from the base again."""
    h = backoff_harness()
    wait_for_post(h)
    for _ in range(3):
        drop_one(h)
        wait_for_post(h)
    h.transport.pop().answer(201)
    assert h.store.last_saved("S1").dropped == 0
    h.clock.advance(1)
    wait_for_post(h)
    drop_one(h)
    assert wait_for_post(h) == 5


def test_jitter_spreads_the_delay() -> None:
    """The random factor is in [0.5, 1.0] of the nominal delay, from the injected source."""
    values = iter([0.0, 0.5])
    h = backoff_harness(jitter=lambda: next(values))
    wait_for_post(h)
    drop_one(h)
    assert wait_for_post(h) == 5  # 10 s x 0.5
    drop_one(h)
    assert wait_for_post(h) == 15  # 20 s x 0.75


def test_give_up_still_destroys() -> None:
    """A subscription failing through its back-offs for failing-give-up is destroyed at
    the first failure after that, and nothing is sent any more."""
    h = backoff_harness(failing_give_up=100)
    wait_for_post(h)
    times = []
    for _ in range(20):
        drop_one(h)
        if h.delivery.get("S1") is None:
            break
        times.append(wait_for_post(h))
    # Failures at 0, 5, 15, 35, 65, 95 and 125, the first one >= 100 s after the first.
    assert times == [5, 10, 20, 30, 30, 30]
    assert h.store.deleted == ["S1"]
    h.publish({"A": {"Email": "late"}})
    h.tick_until(100)
    assert h.transport.calls == []


def test_back_off_survives_a_crash() -> None:
    """The back-off is durable: after a restart a change still waits for its end."""
    h = backoff_harness()
    wait_for_post(h)
    drop_one(h)
    drop_time = h.clock.seconds()
    saved = h.store.last_saved("S1")
    assert saved.dropped == 1 and saved.backoff_until == drop_time + 5
    h.clock.advance(2)
    h.crash_and_restart()
    assert wait_for_post(h) == 3
    drop_one(h)
    assert wait_for_post(h) == 10  # the count survived too: the second delay


def test_zero_cap_turns_the_back_off_off() -> None:
    """push-backoff-max = 0: notifications are not spaced (the behaviour before)."""
    h = backoff_harness(push_backoff_max=0)
    wait_for_post(h)
    drop_one(h)
    assert wait_for_post(h) == 0


def test_backoff_delay_function() -> None:
    """Doubling from the base, capped, jitter in [0.5, 1.0], none before a drop, no
    overflow after very many."""
    assert backoff_delay(0, 10, 60, lambda: 0.0) == 0
    assert [backoff_delay(n, 10, 60, lambda: 0.0) for n in range(1, 6)] == [5, 10, 20, 30, 30]
    assert backoff_delay(2, 10, 60, lambda: 0.999) == pytest.approx(19.99)
    assert backoff_delay(10_000, 10, 3600, lambda: 0.0) == 1800
    assert backoff_delay(3, 0, 60, lambda: 0.5) == 0
