"""The SQLite store's one thread and one connection, taking work first in, first out.

The store's call-order guarantees need exactly this (see :mod:`jmappushd.store.sqlite`):
one thread that runs each job to its end before the next, and hands the results back
to the reactor in the same order: a :class:`~jmappushd.workthread.WorkThread` that
owns the connection. Twisted's ``adbapi`` gives the same with a pool of one, at about
twice the CPU per round trip (study 13).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from jmappushd.store.schema import Cursor
from jmappushd.workthread import WorkThread

P = ParamSpec("P")
T = TypeVar("T")


class SQLThread(WorkThread):
    """Runs jobs on one thread that owns one connection, made by ``connect`` on first
    use (and again after a failed attempt). ``stop`` closes it after the queued jobs
    (SQLite checkpoints the WAL then)."""

    log = Logger()

    def __init__(self, reactor: IReactorFromThreads,
                 connect: Callable[[], sqlite3.Connection], name: str) -> None:
        super().__init__(reactor, name)
        self._connect = connect
        self._connection: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None

    def transaction(self, begin: str, body: Callable[Concatenate[Cursor, P], T],
                    *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """``body(cursor, *args)`` in one transaction opened with ``begin``: committed
        when it returns, rolled back when it raises."""
        return self._submit(self._in_transaction, (begin, body, args, kwargs))

    def statement(self, body: Callable[Concatenate[Cursor, P], T], *args: P.args,
                  **kwargs: P.kwargs) -> Deferred[T]:
        """``body(cursor, *args)`` outside any transaction, for a body that runs one
        statement: SQLite makes a lone statement atomic (autocommit), which saves the
        ``BEGIN`` and ``COMMIT`` and their two GIL hand-overs."""
        return self._submit(self._alone, (body, args, kwargs))

    # -- on the thread --

    def _alone(self, body: Callable[..., T], args: tuple[object, ...],
               kwargs: dict[str, object]) -> T:
        cursor = self._cursor if self._cursor is not None else self._open()
        return body(cursor, *args, **kwargs)

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

    def _finish(self) -> None:
        connection, self._connection, self._cursor = self._connection, None, None
        if connection is not None:
            connection.close()
