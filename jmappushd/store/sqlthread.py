"""The SQLite store's one thread and one connection, taking work first in, first out.

The store's call-order guarantees need exactly this (see :mod:`jmappushd.store.sqlite`):
one thread that runs each job to its end before the next, and hands the results back
to the reactor in the same order. Twisted's ``adbapi`` gives it with a pool of one, but
every job passes through the thread pool's team coordinator, context tracking and a new
``Transaction`` and cursor, most of it Python that holds the GIL the reactor thread
needs. Here a job is one ``SimpleQueue.put`` and its result one ``callFromThread``:
about half the CPU per round trip with one job in flight, a quarter less with four
(study 13).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from jmappushd.store.schema import Cursor

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[Deferred[object], Callable[..., object], tuple[object, ...]]
_STOP = None


class SQLThread:
    """Runs jobs on one thread that owns one connection, made by ``connect`` on first
    use (and again after a failed attempt). ``stop`` ends it after the queued jobs."""

    log = Logger()

    def __init__(self, reactor: IReactorFromThreads,
                 connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._reactor = reactor
        self._connect = connect
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._connection: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        # A daemon thread: a process that exits without closing the store is not held
        # up by it (a commit is durable when it returns; nothing waits in the thread).
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._stopped: Deferred[None] = Deferred()

    def start(self) -> None:
        self._thread.start()

    def call(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """``work(*args)`` on the thread, outside any transaction, in its turn."""
        done: Deferred[T] = Deferred()
        self._queue.put((done, lambda: work(*args, **kwargs), ()))  # type: ignore[arg-type]
        return done

    def transaction(self, begin: str, body: Callable[Concatenate[Cursor, P], T],
                    *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """``body(cursor, *args)`` in one transaction opened with ``begin``: committed
        when it returns, rolled back when it raises."""
        done: Deferred[T] = Deferred()
        self._queue.put((done, self._in_transaction,  # type: ignore[arg-type]
                         (begin, body, args, kwargs)))
        return done

    def stop(self) -> Deferred[None]:
        """After every job queued so far: close the connection (SQLite checkpoints the
        WAL then), end the thread; fires on the reactor when that is done."""
        self._queue.put(_STOP)
        return self._stopped

    # -- on the thread --

    def _open(self) -> sqlite3.Cursor:
        connection = self._connect()
        self._connection, self._cursor = connection, connection.cursor()
        return self._cursor

    def _in_transaction(self, begin: str, body: Callable[..., T], args: tuple[object, ...],
                        kwargs: dict[str, object]) -> T:
        cursor = self._cursor if self._cursor is not None else self._open()
        try:
            cursor.execute(begin)
            result = body(cursor, *args, **kwargs)
            cursor.execute("COMMIT")
        except BaseException:
            if self._connection is not None and self._connection.in_transaction:
                try:
                    cursor.execute("ROLLBACK")
                except sqlite3.Error:
                    self.log.failure("Rolling back a failed SQLite transaction failed")
            raise
        return result

    def _work(self) -> None:
        get, hand_back = self._queue.get, self._reactor.callFromThread
        while True:
            job = get()
            if job is _STOP:
                break
            done, work, args = job
            try:
                result = work(*args)
            except BaseException:
                hand_back(done.errback, Failure())
            else:
                hand_back(done.callback, result)
        failure: Failure | None = None
        try:
            if self._connection is not None:
                self._connection.close()
        except sqlite3.Error:
            failure = Failure()
        self._connection = self._cursor = None
        if failure is None:
            hand_back(self._stopped.callback, None)
        else:
            hand_back(self._stopped.errback, failure)
