"""The failed-login throttle (issue 11, defect 4c): per address, max-failures failures per
window then 429 until a whole window has passed; attempts in flight count; a success
resets; many addresses against one username slow that username's failures only; the
tables are bounded; one log line per lock. Time is a task.Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from jmappushd.auth.failures import PENALTY_MAX, FailureThrottle, address_key
from jmappushd.auth.refusals import LoginThrottled
from tests.support import log_into


def throttle(max_failures: int = 3, window: float = 300, max_entries: int = 1000
             ) -> tuple[FailureThrottle, Clock, list[Any]]:
    clock = Clock()
    events: list[Any] = []
    t = FailureThrottle(clock, max_failures, window, max_entries)
    t.log = Logger(observer=log_into(events))
    return t, clock, events


def fail(t: FailureThrottle, client: str, n: int = 1, user: str = "alice") -> float:
    delay = 0.0
    for i in range(n):
        attempt = b"guess%d" % i
        t.admit(client, attempt)
        delay = t.failed(client, attempt, user)
    return delay


def test_lock_after_max_failures_until_the_window_passes() -> None:
    """After 3 failures the 4th attempt gets LoginThrottled (429) with Retry-After = the rest
    of the window; once the window has passed, the address may try again."""
    t, clock, _ = throttle()
    fail(t, "192.0.2.1", 3)
    with pytest.raises(LoginThrottled) as caught:
        t.admit("192.0.2.1", b"right")
    assert caught.value.status == 429 and caught.value.retry_after == 300
    clock.advance(299.5)
    with pytest.raises(LoginThrottled) as caught:
        t.admit("192.0.2.1", b"right")
    assert caught.value.retry_after == 1
    clock.advance(0.5)
    t.admit("192.0.2.1", b"right")
    t.admit("192.0.2.9", b"other address, never affected")


def test_failures_spread_over_more_than_a_window_do_not_lock() -> None:
    """Only failures inside one window count: 2 now, 2 after the window → no lock."""
    t, clock, _ = throttle()
    fail(t, "192.0.2.1", 2)
    clock.advance(300)
    fail(t, "192.0.2.1", 2)
    t.admit("192.0.2.1", b"x")


def test_a_success_resets_the_address() -> None:
    """Two failures, a success, two more failures: still allowed."""
    t, _, _ = throttle()
    fail(t, "192.0.2.1", 2)
    t.admit("192.0.2.1", b"ok")
    t.succeeded("192.0.2.1", b"ok")
    fail(t, "192.0.2.1", 2)
    t.admit("192.0.2.1", b"x")
    assert len(t._addresses) == 1


def test_attempts_in_flight_count_against_the_allowance() -> None:
    """Parallel requests cannot buy more guesses: with 3 allowed, a 4th distinct attempt
    while 3 are being checked is refused (Retry-After 1); the same credentials again
    join their check and are allowed; an abandoned check frees its place."""
    t, _, _ = throttle()
    for i in range(3):
        t.admit("192.0.2.1", b"g%d" % i)
    with pytest.raises(LoginThrottled) as caught:
        t.admit("192.0.2.1", b"g3")
    assert caught.value.retry_after == 1
    t.admit("192.0.2.1", b"g0")  # identical credentials share one check
    t.abandon("192.0.2.1", b"g1")
    t.admit("192.0.2.1", b"g3")


def test_one_log_line_per_lock_and_never_the_password() -> None:
    """The lock is logged once (with the address), not for each refused attempt."""
    t, clock, events = throttle()
    fail(t, "192.0.2.1", 3)
    for _ in range(50):
        with pytest.raises(LoginThrottled):
            t.admit("192.0.2.1", b"hunter2")
    locks = [e for e in events if "locked" in e["log_format"]]
    assert len(locks) == 1 and locks[0]["client"] == "192.0.2.1"
    assert not any("hunter2" in repr(e) for e in events)
    clock.advance(300)
    fail(t, "192.0.2.1", 3)
    assert len([e for e in events if "locked" in e["log_format"]]) == 2


def test_many_addresses_against_one_name_slow_its_failures_only() -> None:
    """Failures for one username from many addresses: past max-failures each further
    failure waits longer (capped); no address is locked, so the real user's correct
    password from a fresh address is admitted and succeeds without delay."""
    t, clock, events = throttle(max_failures=3)
    delays = [fail(t, f"198.51.100.{i}", 1, user="alice") for i in range(12)]
    assert delays[:3] == [0.0, 0.0, 0.0]
    assert 0 < delays[3] < delays[4] < delays[5]
    assert max(delays) <= PENALTY_MAX
    assert fail(t, "198.51.100.99", 1, user="bob") == 0.0  # other names are unaffected
    t.admit("203.0.113.5", b"alice's right password")
    t.succeeded("203.0.113.5", b"alice's right password")
    assert len([e for e in events if "delayed" in e["log_format"]]) == 1
    clock.advance(300)
    assert fail(t, "198.51.100.1", 1, user="alice") == 0.0  # a new window


def test_the_penalty_ignores_whether_the_user_exists() -> None:
    """The penalty is keyed by the typed name only: it cannot tell existing users apart."""
    t, _, _ = throttle(max_failures=2)
    a = [fail(t, f"198.51.100.{i}", 1, user="real") for i in range(5)]
    b = [fail(t, f"198.51.101.{i}", 1, user="no-such-user") for i in range(5)]
    assert a == b


def test_tables_are_bounded_oldest_first() -> None:
    """An attacker with ever new addresses and names grows nothing past the cap; the
    entries dropped are the least recently touched."""
    t, _, _ = throttle(max_entries=100)
    for i in range(5000):
        fail(t, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1, user=f"user{i}")
    assert len(t._addresses) == 100 and len(t._names) == 100
    assert "10.0.19.135" in t._addresses and "10.0.0.0" not in t._addresses


def test_ipv6_counts_per_64_and_no_address_is_not_counted() -> None:
    """An IPv6 client cannot dodge the count by walking its /64; an IPv4-mapped address is
    the IPv4 one; a request without address (Unix socket, "-") is not throttled by
    address."""
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("-") is None and address_key(None) is None
    t, _, _ = throttle()
    fail(t, "2001:db8:1:2::1", 3)
    with pytest.raises(LoginThrottled):
        t.admit("2001:db8:1:2::abcd", b"x")
    fail(t, "-", 10)
    t.admit("-", b"x")
