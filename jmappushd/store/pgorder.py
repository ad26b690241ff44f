"""Call order for a store whose SQL runs on several threads at once.

The store interfaces promise (a) Deferreds fire in call order, (c) a read sees
every write *called* before it, even one not yet committed. SQLite gets both from
one thread; PostgreSQL should not be limited to one connection, so
:class:`CallOrder` keeps them with a first-in, first-out readers-writer rule, on
the reactor thread:

* a read starts once every earlier write has finished (committed or failed);
  reads with no write between them run side by side, up to ``limit``;
* a write starts once every earlier call has finished, so writes are one at a
  time, in call order (their seqs follow call order too);
* answers that need no SQL (an argument refused, an empty batch) are ready at
  once but wait for their turn like any other call;
* results are held back and handed out strictly in call order.

It knows nothing of SQL: ``run`` is any function that takes a blocking callable
and returns a Deferred of its result (the store passes its thread pool's).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")
Runner = Callable[[Callable[[], Any]], Deferred[Any]]


class _Kind(Enum):
    READ = "read"
    WRITE = "write"
    ANSWER = "answer"


class _Call(Generic[T]):
    __slots__ = ("done", "kind", "outcome", "result", "running", "work")

    def __init__(self, kind: _Kind, work: Callable[[], T]) -> None:
        self.kind = kind
        self.work = work
        self.running = False
        self.done = False
        self.outcome: object = None
        self.result: Deferred[T] = Deferred()


class CallOrder:
    """Schedules blocking calls on ``run`` by the rules above; at most ``limit`` at once."""

    def __init__(self, run: Runner, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._run = run
        self._limit = limit
        self._calls: deque[_Call[Any]] = deque()  # call order; released from the left
        self._running = 0
        self._releasing = False
        self._drained: list[Deferred[None]] = []

    @property
    def pending(self) -> int:
        """Calls made whose Deferred has not fired yet."""
        return len(self._calls)

    def read(self, work: Callable[[], T]) -> Deferred[T]:
        return self._add(_Call(_Kind.READ, work))

    def write(self, work: Callable[[], T]) -> Deferred[T]:
        return self._add(_Call(_Kind.WRITE, work))

    def answer(self, work: Callable[[], T]) -> Deferred[T]:
        """``work`` runs now, on the reactor (it must not block); its result waits its turn."""
        call = _Call(_Kind.ANSWER, work)
        call.done = True
        try:
            call.outcome = work()
        except BaseException:
            call.outcome = Failure()
        return self._add(call)

    def drained(self) -> Deferred[None]:
        """Fires once every call made so far has fired."""
        waiter: Deferred[None] = Deferred()
        if not self._calls:
            waiter.callback(None)
        else:
            self._drained.append(waiter)
        return waiter

    def _add(self, call: _Call[T]) -> Deferred[T]:
        self._calls.append(call)
        self._release()
        self._pump()
        return call.result

    def _pump(self) -> None:
        """Start every waiting call the rules allow, scanning in call order."""
        unfinished = False  # some earlier call has not finished
        for call in list(self._calls):
            if self._running >= self._limit:
                return
            if call.done:
                continue
            if call.kind is _Kind.WRITE:
                if not call.running and not unfinished:
                    self._start(call)
                return  # nothing after an unfinished write may start
            if not call.running:
                self._start(call)
            unfinished = True

    def _start(self, call: _Call[Any]) -> None:
        call.running = True
        self._running += 1
        d = self._run(call.work)
        d.addBoth(self._finished, call)

    def _finished(self, outcome: object, call: _Call[Any]) -> None:
        self._running -= 1
        call.running = False
        call.done = True
        call.outcome = outcome
        self._release()
        self._pump()

    def _release(self) -> None:
        if self._releasing:
            return  # the loop below, further up the stack, hands it out in turn
        self._releasing = True
        try:
            while self._calls and self._calls[0].done:
                call = self._calls.popleft()
                if isinstance(call.outcome, Failure):
                    call.result.errback(call.outcome)
                else:
                    call.result.callback(call.outcome)
        finally:
            self._releasing = False
        if not self._calls and self._drained:
            waiters, self._drained = self._drained, []
            for waiter in waiters:
                waiter.callback(None)
