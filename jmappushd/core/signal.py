"""A start-up signal many parts can wait on: fired once, answered to every waiter."""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure


class StartAbandoned(Exception):
    """What a start signal fails with when its service was stopped before it could start
    (the daemon stopped while waiting for its database): not an error to report."""


class StartSignal:
    """Fired once (done or failed); every :meth:`wait`, before or after, gets the outcome.

    A Deferred can be awaited by one consumer only; start-up outcomes are awaited by
    the daemon's readiness and by the services that depend on another one.
    """

    __slots__ = ("_done", "_failure", "_waiters")

    def __init__(self) -> None:
        self._done = False
        self._failure: Failure | None = None
        self._waiters: list[defer.Deferred[None]] = []

    @property
    def done(self) -> bool:
        return self._done

    def fire(self, failure: Failure | None = None) -> None:
        """Record the outcome and answer every waiter; later calls are ignored."""
        if self._done:
            return
        self._done, self._failure = True, failure
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._answer(waiter)

    def wait(self) -> defer.Deferred[None]:
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._done:
            self._answer(waiter)
        else:
            self._waiters.append(waiter)
        return waiter

    def _answer(self, waiter: defer.Deferred[None]) -> None:
        if self._failure is None:
            waiter.callback(None)
        else:
            waiter.errback(self._failure)
