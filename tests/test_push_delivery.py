"""The delivery service on a Clock with a fake transport: throttle, retries, expiry (WP-*, PS-*).

Every test is instant and deterministic: time moves only through ``Clock.advance`` and the
push service answers only when the test fires the Deferred of a recorded POST.
"""

from __future__ import annotations

import re

from twisted.internet import defer

from jmappushd.transports.webpush import payload
from tests.push_fakes import Harness


def started(h: Harness, **changes: object) -> None:
    h.start(h.record(**changes))  # type: ignore[arg-type]


def test_state_change_request_shape() -> None:
    """WP-1..WP-4, ENC-1, VAPID-12, SC-4: a POST to the URL with JSON content type, TTL,
    Urgency, Topic, aes128gcm encoding and a VAPID header; the body decrypts (http_ece) to a
    StateChange with only @type and changed."""
    h = Harness()
    started(h)
    h.publish({"A": {"Email": "s1"}})
    call = h.transport.pop()
    assert call.url == "https://push.example/S1"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["Content-Encoding"] == "aes128gcm"
    assert re.fullmatch(r"\d+", call.headers["TTL"]) and call.headers["TTL"] == "86400"
    assert call.headers["Urgency"] == "normal"
    assert call.headers["Topic"] == payload.topic_for("S1")
    assert call.headers["Authorization"].endswith("k=" + h.key.public_key_b64)
    assert h.decrypt(call) == {"@type": "StateChange", "changed": {"A": {"Email": "s1"}}}
    assert len(call.body) <= 4096
    call.answer(201)
    assert h.metric("jmappushd_push_deliveries_total", kind="state", outcome="delivered") == 1


def test_no_keys_means_plain_json() -> None:
    """ENC-8, C-WP-4: without keys the body is plain JSON and has no Content-Encoding."""
    h = Harness()
    started(h, keys_p256dh=None, keys_auth=None)
    h.publish({"A": {"Email": "s1"}})
    call = h.transport.pop()
    assert "Content-Encoding" not in call.headers
    assert call.body == b'{"@type":"StateChange","changed":{"A":{"Email":"s1"}}}'


def test_verification_once_without_topic_and_never_retried() -> None:
    """PS-13, SC-3, C-PS-9, VAPID-14, C-WP-1: one PushVerification, encrypted, signed, no Topic;
    a 500 or 403 answer is not retried."""
    for status in (500, 403):
        h = Harness()
        record = h.record(verified=False)
        h.start()
        h.delivery.created(record)
        call = h.transport.pop()
        assert "Topic" not in call.headers
        assert h.decrypt(call) == {"@type": "PushVerification", "pushSubscriptionId": "S1",
                                   "verificationCode": "secret-code"}
        call.answer(status)
        h.tick_until(50)
        assert h.transport.calls == []


def test_unverified_subscription_gets_nothing_else() -> None:
    """PS-14: before verification no StateChange is sent, however many changes happen."""
    h = Harness()
    record = h.record(verified=False)
    h.start()
    h.delivery.created(record)
    h.transport.pop().answer(201)
    for i in range(5):
        h.publish({"A": {"Email": f"s{i}"}})
    h.tick_until(30)
    assert h.transport.calls == []


def test_verification_answered_gone_destroys() -> None:
    """WP-6: a 404/410 answer to the verification destroys the subscription."""
    h = Harness()
    record = h.record(verified=False)
    h.start()
    h.delivery.created(record)
    h.transport.pop().answer(410)
    assert h.store.deleted == ["S1"] and h.delivery.get("S1") is None


def test_unverified_destroyed_after_verify_timeout() -> None:
    """C-PS-8: a subscription not verified within push-verify-timeout is destroyed."""
    h = Harness(push_verify_timeout=60_000)
    record = h.record(verified=False)
    h.start()
    h.delivery.created(record)
    h.transport.pop().answer(201)
    h.tick_until(59)
    assert h.store.deleted == []
    h.tick_until(1)
    assert h.store.deleted == ["S1"]


def test_verified_after_create_becomes_active() -> None:
    """PS-15: once the client wrote the right code, changes are pushed."""
    import dataclasses

    h = Harness()
    record = h.record(verified=False)
    h.start()
    h.delivery.created(record)
    h.transport.pop().answer(201)
    h.publish({"A": {"Email": "before"}})
    defer.ensureDeferred(h.delivery.updated(dataclasses.replace(record, verified=True)))
    h.publish({"A": {"Mailbox": "after"}})
    assert h.decrypt(h.transport.pop())["changed"] == {"A": {"Mailbox": "after"}}
    h.tick_until(60)
    assert h.store.deleted == []


def test_expiry_stops_and_destroys() -> None:
    """PS-4, C-PS-2: after expires nothing is sent and the subscription is destroyed."""
    h = Harness()
    started(h, expires=h.clock.seconds() + 10)
    h.clock.advance(11)
    h.publish({"A": {"Email": "s1"}})
    assert h.transport.calls == []
    assert h.store.deleted == ["S1"]
    h2 = Harness()
    started(h2, expires=h2.clock.seconds() + 10)
    h2.tick_until(11)
    assert h2.store.deleted == ["S1"]


def test_throttle_leading_edge_and_merging() -> None:
    """SC-2, C-WP-5: the first change goes at once; changes within push-throttle are merged
    (newest state per account/type) into one StateChange sent when the window ends."""
    h = Harness(push_throttle=5_000)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(201)
    h.publish({"A": {"Email": "s2"}})
    h.publish({"A": {"Email": "s3", "Mailbox": "m1"}})
    assert h.transport.calls == []
    h.tick_until(4)
    assert h.transport.calls == []
    h.tick_until(1)
    call = h.transport.pop()
    assert h.decrypt(call)["changed"] == {"A": {"Email": "s3", "Mailbox": "m1"}}
    call.answer(201)
    h.tick_until(10)
    assert h.transport.calls == []
    h.publish({"A": {"Email": "s4"}})  # quiet for > push-throttle: leading edge again
    assert h.decrypt(h.transport.pop())["changed"] == {"A": {"Email": "s4"}}


def test_changes_during_flight_are_sent_after() -> None:
    """Changes that arrive while a POST is in flight are merged and sent once it is done."""
    h = Harness(push_throttle=0)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    first = h.transport.pop()
    h.publish({"A": {"Email": "s2"}})
    assert h.transport.calls == []
    first.answer(201)
    assert h.decrypt(h.transport.pop())["changed"] == {"A": {"Email": "s2"}}


def test_attempt_schedule_then_drop_and_carry_forward() -> None:
    """C-WP-2: a 5xx is retried push-attempts-max times in total, push-attempt-interval apart,
    with newer changes merged in; then it is dropped (metric), the subscription stays, and the
    next StateChange carries everything since the last success."""
    h = Harness(push_attempts_max=3, push_attempt_interval=10_000, push_throttle=0)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(500)
    h.publish({"A": {"Mailbox": "m1"}})
    assert h.transport.calls == []  # failing: merged into the retry
    h.tick_until(9)
    assert h.transport.calls == []
    h.tick_until(1)
    second = h.transport.pop()
    assert h.decrypt(second)["changed"] == {"A": {"Email": "s1", "Mailbox": "m1"}}
    second.answer(503)
    h.tick_until(10)
    h.transport.pop().answer(500)
    h.tick_until(600)
    assert h.transport.calls == []
    assert h.metric("jmappushd_push_dropped_total", reason="attempts") == 1
    assert h.metric("jmappushd_push_retries_total") == 2
    assert h.delivery.get("S1") is not None and h.store.deleted == []
    h.publish({"A": {"Thread": "t1"}})
    call = h.transport.pop()
    assert h.decrypt(call)["changed"] == {"A": {"Email": "s1", "Mailbox": "m1", "Thread": "t1"}}
    call.answer(201)
    h.publish({"A": {"Email": "s2"}})
    assert h.decrypt(h.transport.pop())["changed"] == {"A": {"Email": "s2"}}


def test_timeout_and_network_errors_are_retried() -> None:
    """C-WP-2: a timeout or connection error counts as a failed attempt and is retried."""
    h = Harness(push_throttle=0)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().d.errback(defer.TimeoutError())
    h.tick_until(10)
    h.transport.pop().d.errback(ConnectionRefusedError())
    h.tick_until(10)
    h.transport.pop().answer(201)
    assert h.metric("jmappushd_push_deliveries_total", kind="state", outcome="error") == 2


def test_longer_retry_after_wins_over_attempt_interval() -> None:
    """C-WP-2: a Retry-After on a 503 longer than push-attempt-interval delays the retry."""
    h = Harness(push_attempt_interval=10_000, push_throttle=0)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(503, "25")
    h.tick_until(24)
    assert h.transport.calls == []
    h.tick_until(1)
    h.transport.pop().answer(201)


def test_429_honours_retry_after_and_merges() -> None:
    """PS-22, WP-8: after 429 Retry-After: 30 nothing is POSTed for 30 s, changes in between
    arrive merged in one StateChange, and the 429 does not use up an attempt."""
    h = Harness(push_attempts_max=1, push_throttle=0)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(429, "30")
    h.publish({"A": {"Email": "s2"}})
    h.publish({"A": {"Mailbox": "m1"}})
    h.tick_until(29)
    assert h.transport.calls == []
    h.tick_until(1)
    call = h.transport.pop()
    assert h.decrypt(call)["changed"] == {"A": {"Email": "s2", "Mailbox": "m1"}}
    call.answer(201)
    assert h.metric("jmappushd_push_dropped_total", reason="attempts") == 0


def test_429_without_retry_after_waits_a_minute() -> None:
    """C-WP-2: a 429 without Retry-After waits 60 s."""
    h = Harness(push_throttle=0)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(429)
    h.tick_until(59)
    assert h.transport.calls == []
    h.tick_until(1)
    assert h.transport.calls


def test_gone_destroys_and_rejected_drops() -> None:
    """WP-6: 404/410 destroy the subscription; WP-9: 400/401/403/413 drop without retry."""
    for status in (404, 410):
        h = Harness()
        started(h)
        h.publish({"A": {"Email": "s1"}})
        h.transport.pop().answer(status)
        assert h.store.deleted == ["S1"]
        h.publish({"A": {"Email": "s2"}})
        assert h.transport.calls == []
    for status in (400, 401, 403, 413):
        h = Harness()
        started(h)
        h.publish({"A": {"Email": "s1"}})
        h.transport.pop().answer(status)
        h.tick_until(100)
        assert h.transport.calls == [] and h.store.deleted == []
        assert h.metric("jmappushd_push_dropped_total", reason="rejected") == 1


def test_redirect_is_a_failure() -> None:
    """C-WP-2: a 3xx is not followed but retried like a failure."""
    h = Harness(push_throttle=0)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(302)
    h.tick_until(10)
    assert h.transport.pop().url == "https://push.example/S1"


def test_failing_continuously_destroys() -> None:
    """A subscription failing continuously for failing-give-up seconds is destroyed."""
    h = Harness(failing_give_up=100, push_attempts_max=100, push_attempt_interval=30_000)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    for _ in range(4):
        h.transport.pop().answer(500)
        h.tick_until(30)
    h.transport.pop().answer(500)
    assert h.store.deleted == ["S1"]


def test_types_and_accounts_filter() -> None:
    """PS-6, ES-12: only the subscription's types and the user's accounts are pushed."""
    h = Harness()
    started(h, types=("Mailbox",))
    h.publish({"A": {"Email": "e1"}})
    h.publish({"B": {"Mailbox": "x"}})
    assert h.transport.calls == []
    h.publish({"A": {"Email": "e2", "Mailbox": "m1"}, "B": {"Mailbox": "y"}})
    assert h.decrypt(h.transport.pop())["changed"] == {"A": {"Mailbox": "m1"}}


def test_split_state_change_goes_in_parts_without_topic() -> None:
    """C-WP-3, WP-7: an oversized StateChange is sent as several POSTs of ≤4096 octets, with no
    Topic (parts must not replace each other)."""
    h = Harness(push_throttle=0)
    accounts = tuple(f"acct{i:03d}" for i in range(80))
    started(h, accounts=accounts)
    h.publish({a: {"Email": "e" * 60} for a in accounts})
    calls = list(h.transport.calls)
    assert len(calls) == 1  # parts go one after the other
    seen: dict[str, dict[str, str]] = {}
    while h.transport.calls:
        call = h.transport.pop()
        assert len(call.body) <= 4096 and "Topic" not in call.headers
        seen.update(h.decrypt(call)["changed"])
        call.answer(201)
    assert seen == {a: {"Email": "e" * 60} for a in accounts}


def test_revoked_credentials_and_grants_refresh() -> None:
    """PS-7: a subscription deleted in the store (token revoked) stops at once; a new grant
    brings the granted account's changes."""
    h = Harness()
    h.start(h.record("S1"), h.record("S2", user="u2", accounts=("B",)))
    h.store.grant("u1", "C")
    h.store.delete_push_subscription("S2")  # behind the delivery service's back
    h.delivery.invalidated()
    assert h.delivery.get("S2") is None
    h.publish({"B": {"Email": "b"}, "C": {"Email": "c"}})
    call = h.transport.pop()
    assert call.url.endswith("/S1") and h.decrypt(call)["changed"] == {"C": {"Email": "c"}}
    assert h.transport.calls == []


def test_metrics_gauge_counts_states() -> None:
    """Metrics: push_subscriptions by state."""
    h = Harness()
    h.start(h.record("S1"), h.record("S2", verified=False))
    assert h.metric("jmappushd_push_subscriptions", state="verified") == 1
    assert h.metric("jmappushd_push_subscriptions", state="unverified") == 1


def test_attempt_is_recorded_before_the_post_and_resumes_after_a_crash() -> None:
    """Durability: the owed state and attempt count are in the store before each POST; after a
    crash the retry happens at the recorded time, carrying the merged state, and within the
    attempt budget."""
    h = Harness(push_attempts_max=2, push_throttle=0)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    saved = h.store.last_saved("S1")
    assert saved.attempts == 1 and saved.pending == {"A": {"Email": "s1"}}
    h.transport.pop().answer(500)
    assert h.store.last_saved("S1").next_attempt == h.clock.seconds() + 10
    h.publish({"A": {"Mailbox": "m1"}})  # merged in memory only: found again via the seq
    h.crash_and_restart()
    h.tick_until(10)
    call = h.transport.pop()
    assert h.decrypt(call)["changed"] == {"A": {"Email": "s1", "Mailbox": "m1"}}
    call.answer(500)  # the second and last attempt
    h.tick_until(100)
    assert h.transport.calls == []
    assert h.store.last_saved("S1").attempts == 0
    assert h.store.last_saved("S1").pending == {"A": {"Email": "s1", "Mailbox": "m1"}}


def test_last_attempt_in_flight_at_crash_is_not_repeated() -> None:
    """Durability: if the last allowed attempt was in flight when the daemon died, the
    notification is dropped after restart rather than sent once more."""
    h = Harness(push_attempts_max=1, push_throttle=0)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop()  # never answered: the daemon dies
    h.crash_and_restart()
    h.tick_until(60)
    assert h.transport.calls == []
    assert h.metric("jmappushd_push_dropped_total", reason="attempts") == 1
    h.publish({"A": {"Mailbox": "m1"}})
    assert h.decrypt(h.transport.pop())["changed"] == {"A": {"Email": "s1", "Mailbox": "m1"}}


def test_throttled_change_survives_a_crash() -> None:
    """Durability: a change merged but not yet sent is recovered from the change sequence."""
    h = Harness(push_throttle=5_000)
    started(h)
    h.publish({"A": {"Email": "s1"}})
    h.transport.pop().answer(201)
    h.publish({"A": {"Email": "s2"}})
    h.crash_and_restart()
    h.tick_until(1)
    call = h.transport.pop()
    assert h.decrypt(call)["changed"] == {"A": {"Email": "s2"}}
    call.answer(201)
    h.crash_and_restart()
    h.tick_until(10)
    assert h.transport.calls == []


def test_stop_cancels_and_leaves_no_timers() -> None:
    """Shutdown: the tick stops, in-flight POSTs are cancelled, owed state is recorded and no
    delayed call is left on the clock."""
    h = Harness(push_throttle=0)
    h.start(h.record("S1"), h.record("S2"))
    h.publish({"A": {"Email": "s1"}})
    in_flight = h.transport.calls
    assert len(in_flight) == 2
    done = defer.ensureDeferred(h.delivery.stop())
    assert done.called
    assert all(call.d.called for call in in_flight)
    assert h.clock.getDelayedCalls() == []
    assert h.store.last_saved("S1").pending == {"A": {"Email": "s1"}}
    assert h.store.last_saved("S1").attempts == 1
    h.publish({"A": {"Email": "s2"}})
    assert h.transport.calls == in_flight
