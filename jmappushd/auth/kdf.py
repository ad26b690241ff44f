"""Password checks as a bounded resource: a few KDFs at once, a bounded queue, and one
computation for concurrent checks of the same credentials.

scrypt costs tens of milliseconds of one core and 32 MiB per check, so unbounded checks
let a handful of wrong-password requests a second take every core from everyone else.
Checks beyond ``slots`` wait in a FIFO of at most ``max_queued``; beyond that the login
is refused at once with :class:`KDFBusy` (503 + Retry-After). Checks of the same
credentials against the same stored hash that overlap share one computation: they are
keyed by the caller's keyed hash of them, never by the password itself.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from jmappushd.auth.passwords import verify_password
from jmappushd.auth.refusals import KDFBusy

ThreadRunner = Callable[..., "Deferred[Any]"]
"""Runs ``f(*args)`` in a thread and fires with its result (the reactor's pool)."""

Verify = Callable[[str, str], bool]

_RETRY_AFTER_MAX = 60  # s; an estimate beyond this says nothing useful to a client
_SMOOTHING = 0.2  # weight of the newest duration in the running mean


@dataclass(eq=False)
class _Flight:
    """One KDF computation and the callers waiting for its answer."""

    password: str
    encoded: str
    waiters: list[Deferred[bool]] = field(default_factory=list)


class KDFLimiter:
    """Runs password checks in threads, at most ``slots`` at once."""

    def __init__(self, run_in_thread: ThreadRunner, clock: IReactorTime, slots: int,
                 max_queued: int, verify: Verify = verify_password) -> None:
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._slots = max(1, slots)
        self._max_queued = max_queued
        self._verify = verify
        self._flights: dict[bytes, _Flight] = {}
        self._queue: deque[bytes] = deque()
        self._mean = 0.0  # seconds one KDF took lately
        self.running = 0
        self.computed = 0  # KDFs started since the daemon started (a metric)
        self.shared = 0  # checks answered by another caller's computation (a metric)

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def queued(self) -> int:
        return len(self._queue)

    def verify(self, key: bytes, password: str, encoded: str) -> Deferred[bool]:
        """Whether ``password`` matches ``encoded``; ``key`` identifies the pair (a keyed
        hash of the credentials and the stored hash). Fails with :class:`KDFBusy` when
        the queue is full."""
        waiter: Deferred[bool] = Deferred()
        flight = self._flights.get(key)
        if flight is not None:
            self.shared += 1
            flight.waiters.append(waiter)
            return waiter
        if self.running >= self._slots and len(self._queue) >= self._max_queued:
            return defer.fail(KDFBusy("too many logins are being checked; retry shortly",
                                      self.retry_after()))
        flight = self._flights[key] = _Flight(password, encoded, [waiter])
        if self.running < self._slots:
            self._start(key, flight)
        else:
            self._queue.append(key)
        return waiter

    def retry_after(self) -> int:
        """Seconds until the work now waiting would be done, by the recent KDF time."""
        backlog = len(self._queue) + self.running
        estimate = math.ceil(self._mean * backlog / self._slots)
        return min(_RETRY_AFTER_MAX, max(1, estimate))

    def _start(self, key: bytes, flight: _Flight) -> None:
        self.running += 1
        self.computed += 1
        started = self._clock.seconds()
        d = self._run_in_thread(self._verify, flight.password, flight.encoded)
        d.addBoth(self._finished, key, flight, started)

    def _finished(self, result: bool | Failure, key: bytes, flight: _Flight,
                  started: float) -> None:
        self.running -= 1
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.password = ""  # do not keep the secret alive longer than the check
        elapsed = max(0.0, self._clock.seconds() - started)
        self._mean += _SMOOTHING * (elapsed - self._mean)
        self._next()
        for waiter in flight.waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(bool(result))

    def _next(self) -> None:
        while self.running < self._slots and self._queue:
            key = self._queue.popleft()
            flight = self._flights.get(key)
            if flight is not None:
                self._start(key, flight)
