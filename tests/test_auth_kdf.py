"""The KDF limiter: at most N password checks at once, a bounded FIFO queue refused with
503 + Retry-After past its end, and one computation for identical concurrent checks
(issue 11, defect 4a/4b). Threads are faked: each check waits until the test runs it."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from jmappushd.auth.kdf import KDFLimiter
from jmappushd.auth.refusals import KDFBusy
from tests.auth_fakes import HeldThreads


def matches(password: str, encoded: str) -> bool:
    """A stand-in KDF: the "hash" is the password itself."""
    return password == encoded


def limiter(slots: int = 2, queued: int = 3, clock: Clock | None = None
            ) -> tuple[KDFLimiter, HeldThreads, Clock]:
    threads = HeldThreads()
    clock = clock or Clock()
    return KDFLimiter(threads, clock, slots, queued, verify=matches), threads, clock


def results(ds: list[defer.Deferred[bool]]) -> list[Any]:
    out: list[Any] = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_at_most_slots_run_and_the_rest_wait_in_order() -> None:
    """Two slots: two checks go to threads, three wait; each finished check starts the
    oldest waiting one, and every caller gets its own answer."""
    kdf, threads, _ = limiter(slots=2, queued=3)
    ds = [kdf.verify(b"k%d" % i, f"pw{i}", "pw0" if i == 0 else "x") for i in range(5)]
    got = results(ds)
    assert (kdf.running, kdf.queued, len(threads.jobs)) == (2, 3, 2)
    assert [job.args[0] for job in threads.jobs] == ["pw0", "pw1"]
    threads.run_next()
    assert got == [True]
    assert (kdf.running, kdf.queued) == (2, 2)
    assert [job.args[0] for job in threads.jobs] == ["pw1", "pw2"]
    threads.run_all()
    assert got == [True, False, False, False, False]
    assert (kdf.running, kdf.queued, kdf.computed) == (0, 0, 5)


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    """Past slots + max-queued the check fails with KDFBusy (HTTP 503) without any thread
    work; Retry-After estimates the backlog from recent KDF durations."""
    kdf, threads, clock = limiter(slots=1, queued=2)
    first = kdf.verify(b"a", "a", "a")
    clock.advance(2.0)  # the first KDF takes 2 s
    threads.run_next()
    assert first.called
    held = [kdf.verify(b"k%d" % i, "p", "p") for i in range(3)]  # 1 running + 2 queued
    refused = kdf.verify(b"over", "p", "p")
    failure = results([refused])[0]
    assert isinstance(failure, Failure) and failure.check(KDFBusy)
    busy = failure.value
    assert isinstance(busy, KDFBusy) and busy.status == 503
    # mean 0.4 s (smoothed from one 2 s sample) * 3 in the backlog / 1 slot = 1.2, rounded up
    assert busy.retry_after == 2
    assert threads.calls == 2
    threads.run_all()
    assert all(d.called for d in held)


def test_identical_concurrent_checks_share_one_computation() -> None:
    """200 concurrent checks of the same key (credentials + stored hash) cost one KDF and
    take no queue room; all 200 get the answer; a later check computes afresh."""
    kdf, threads, _ = limiter(slots=1, queued=1)
    ds = [kdf.verify(b"same", "pw", "pw") for _ in range(200)]
    got = results(ds)
    assert threads.calls == 1 and kdf.queued == 0 and kdf.shared == 199
    threads.run_all()
    assert got == [True] * 200
    kdf.verify(b"same", "pw", "pw")
    assert threads.calls == 2


def test_a_queued_check_is_shared_too() -> None:
    """A check identical to one still waiting in the queue joins it instead of queueing."""
    kdf, threads, _ = limiter(slots=1, queued=1)
    kdf.verify(b"busy", "x", "x")
    waiting = [kdf.verify(b"q", "pw", "pw") for _ in range(5)]
    assert kdf.queued == 1
    threads.run_all()
    assert [d.result for d in waiting] == [True] * 5 and kdf.computed == 2


def test_a_crashing_kdf_fails_every_waiter_and_frees_its_slot() -> None:
    """An exception in the thread reaches every caller of that computation; the slot is
    released and the queue moves on."""

    def broken(password: str, encoded: str) -> bool:
        raise MemoryError("scrypt")

    threads = HeldThreads()
    kdf = KDFLimiter(threads, Clock(), 1, 4, verify=broken)
    ds = [kdf.verify(b"k", "p", "h") for _ in range(3)]
    nxt = kdf.verify(b"other", "p", "h")
    threads.run_next()
    got = results(ds)
    assert all(isinstance(f, Failure) and f.check(MemoryError) for f in got)
    assert kdf.running == 1 and len(threads.jobs) == 1
    threads.run_next()
    results([nxt])
    assert kdf.running == 0


def test_the_password_is_not_kept_after_the_check() -> None:
    """Nothing of a finished check stays in the limiter (no long-lived secret)."""
    kdf, threads, _ = limiter()
    kdf.verify(b"k", "hunter2", "hunter2")
    threads.run_all()
    assert "hunter2" not in repr(vars(kdf))


@pytest.mark.parametrize("slots", [0, -1])
def test_at_least_one_slot(slots: int) -> None:
    """A non-positive slot count still leaves one slot (0 means "CPU count" upstream)."""
    kdf, _, _ = limiter(slots=slots)
    assert kdf.slots == 1
