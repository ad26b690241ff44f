"""The PostgreSQL store's connections: idle ones shared by the pool threads, a
transaction or a lone statement on one, and what a failed connection means.

A connection that fails (server restart, network) is dropped and the call fails with
``StoreUnavailable``; the next call connects afresh. A transaction that fails on its
first statement over an idle pooled connection is retried once on a new connection,
since nothing of it reached the server.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from jmappushd.store import pgops as ops
from jmappushd.store.pgconnect import PgConnector, one_line
from jmappushd.store.pgschema import migrate
from jmappushd.store.records import StoreUnavailable

__all__ = ["Connection", "Connections", "first_open"]

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]


class Connections:
    """Idle connections, taken and given back by pool threads (thread-safe)."""

    def __init__(self, connector: PgConnector) -> None:
        self._connector = connector
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def transact(self, begin: bytes, body: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``body(cursor, *args, **kwargs)`` in one transaction (on a pool thread)."""

        def work(cursor: ops.Cursor) -> T:
            return body(cursor, *args, **kwargs)

        connection, reused = self._take()
        try:
            return self._transact(connection, begin, work)
        except _Stale as stale:
            failed = stale
        if reused:
            try:
                return self._transact(self._connector.connect(), begin, work)
            except _Stale as stale:
                failed = stale
        raise StoreUnavailable(f"{self._connector.name}: {failed}")

    def _transact(self, connection: Connection, begin: bytes, work: Callable[[ops.Cursor], T]
                  ) -> T:
        try:
            with connection.cursor() as cursor:
                try:
                    cursor.execute(begin)
                except psycopg.OperationalError as exc:
                    raise _Stale(exc) from None
                try:
                    result = work(cursor)
                    cursor.execute(b"COMMIT")
                except BaseException:
                    if not connection.broken:
                        connection.execute(b"ROLLBACK")
                    raise
        except psycopg.OperationalError as exc:
            raise self._lost(connection, exc) from None
        except _Stale:
            connection.close()
            raise
        except BaseException:
            self._keep_unless_broken(connection)
            raise
        self._give(connection)
        return result

    def single(self, body: Callable[..., T], *args: Any) -> T:
        """Run ``body(cursor, *args)``, one statement, as its own transaction (on a pool
        thread): no ``BEGIN``/``COMMIT`` round trips, which cost the client more CPU than
        the statement. An idle connection the server has closed is replaced first; once
        the statement is sent, a failure is not retried (it may have committed), it is
        StoreUnavailable."""
        connection, reused = self._take()
        if reused and _gone(connection):
            connection.close()
            connection = self._connector.connect()
        try:
            with connection.cursor() as cursor:
                result = body(cursor, *args)
        except psycopg.OperationalError as exc:
            raise self._lost(connection, exc) from None
        except BaseException:
            self._keep_unless_broken(connection)
            raise
        self._give(connection)
        return result

    def _lost(self, connection: Connection, error: psycopg.OperationalError
              ) -> StoreUnavailable:
        """The connection failed under a call: drop it; the call fails as unavailable."""
        connection.close()
        return StoreUnavailable(f"{self._connector.name}: {one_line(error)}")

    def _keep_unless_broken(self, connection: Connection) -> None:
        """After a call's own error (a constraint, a bug), keep a connection that works."""
        if connection.broken:
            connection.close()
        else:
            self._give(connection)

    def _take(self) -> tuple[Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connector.connect(), False

    def _give(self, connection: Connection) -> None:
        with self._lock:
            self._idle.append(connection)

    def add(self, connection: Connection) -> None:
        self._give(connection)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class _Stale(Exception):
    """An idle connection failed on BEGIN: nothing was done, a new one may succeed."""

    def __init__(self, error: psycopg.OperationalError) -> None:
        super().__init__(one_line(error))


def _gone(connection: Connection) -> bool:
    """Whether an idle connection should not be used: a server that ends a connection
    (a restart, an administrator) sends an error and closes it, so its socket becomes
    readable, where an idle connection that LISTENs to nothing has nothing to read
    (an occasional parameter report costs a needless reconnect, nothing more)."""
    if connection.closed or connection.broken:
        return True
    try:
        readable, _, _ = select.select([connection.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def first_open(connections: Connections, connector: PgConnector) -> tuple[int, int]:
    """Connect once and migrate: a pool thread's job at open()."""
    connection = connector.connect()
    try:
        versions = migrate(connection)
    except psycopg.OperationalError as exc:
        connection.close()
        raise StoreUnavailable(f"{connector.name}: {one_line(exc)}") from None
    except BaseException:
        connection.close()
        raise
    connections.add(connection)
    return versions
