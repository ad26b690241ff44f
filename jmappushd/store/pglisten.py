"""The LISTEN connection: PostgreSQL's notifications as wake-ups, watched on the reactor.

One connection per daemon LISTENs on ``jmappushd_changes`` (and on the channels of
any other :class:`Channel`, such as push subscription changes). Connecting (and the
LISTEN) blocks, so it runs on a thread; afterwards the connection's socket is an
``IReadDescriptor`` of the reactor: when it is readable, ``consume_input()`` takes
what arrived (libpq's socket is non-blocking) and ``notifies()`` hands over the
notifications without waiting. Each notification's payload (the last seq its
transaction recorded) goes to ``on_wake``.

A lost connection (server restart, network) is logged once per outage and
reconnected 1 s doubling to 30 s; every successful (re)connect calls ``on_wake``
with None, since notifications sent meanwhile are gone and the log must be read
from the watermark.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import pq, sql
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jmappushd.reactor import IDaemonReactor
from jmappushd.store.pgconnect import PgConnector, one_line
from jmappushd.store.pgops import CHANGES_CHANNEL

RETRY_FIRST = 1.0  # s before the first reconnect
RETRY_MAX = 30.0  # s between reconnects at most

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]
Wake = Callable[[int | None], None]


class Channel(Protocol):
    """Another channel's listener: its notifications' payloads, and each (re)connect."""

    def touched(self, payload: str) -> None: ...

    def reconnected(self) -> None: ...


def _open(connector: PgConnector, channels: list[str]) -> Connection:
    """Connect and LISTEN (blocking: on a thread)."""
    connection = connector.connect(autocommit=True)
    try:
        for channel in channels:
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except psycopg.Error as exc:
        connection.close()
        raise OSError(one_line(exc)) from None
    return connection


def _payload_seq(payload: str) -> int | None:
    try:
        return int(payload)
    except ValueError:
        return None  # not ours to interpret: read from the watermark


@implementer(IReadDescriptor)
class _Socket:
    """The LISTEN connection's socket as the reactor sees it.

    The reactor watches a duplicate of libpq's descriptor: libpq closes its own the
    moment it sees the connection end, and a closed descriptor could no longer be
    taken out of epoll (or, reused by the next socket, would be watched for us).
    """

    def __init__(self, watcher: ListenWatcher, connection: Connection) -> None:
        self._watcher = watcher
        self.connection = connection
        self._fileno = os.dup(connection.pgconn.socket)

    def close(self) -> None:
        if self._fileno != -1:
            os.close(self._fileno)
            self._fileno = -1

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "pglisten"

    def doRead(self) -> None:
        self._watcher._readable(self)

    def connectionLost(self, reason: Failure) -> None:
        self._watcher._lost(self, reason.getErrorMessage())


class ListenWatcher:
    """Keeps one LISTEN connection up and calls ``on_wake`` for what it hears."""

    log = Logger()

    def __init__(self, connector: PgConnector, reactor: IDaemonReactor, fds: IReactorFDSet,
                 on_wake: Wake, channel: str = CHANGES_CHANNEL,
                 others: Mapping[str, Channel] | None = None) -> None:
        """``fds`` is ``reactor`` itself in the daemon (which socket to watch)."""
        self._others = dict(others or {})
        self._connector = connector
        self._reactor = reactor
        self._fds = fds
        self._on_wake = on_wake
        self._channel = channel
        self._socket: _Socket | None = None
        self._retry: IDelayedCall | None = None
        self._delay = RETRY_FIRST
        self._running = False
        self._outage = False
        self.connects = 0  # successful (re)connects (tests)

    @property
    def connected(self) -> bool:
        return self._socket is not None

    def start(self) -> None:
        self._running = True
        self._connect()

    def stop(self) -> None:
        """Stop listening: the connection is closed on a thread, no reconnect follows."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._drop()

    def _in_thread(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        reactor = self._reactor
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    def _connect(self) -> None:
        self._retry = None
        d = self._in_thread(_open, self._connector, [self._channel, *self._others])
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, connection: Connection) -> None:
        if not self._running:
            self._in_thread(connection.close)
            return
        self._socket = _Socket(self, connection)
        self._fds.addReader(self._socket)
        self._delay = RETRY_FIRST
        self.connects += 1
        if self._outage:
            self._outage = False
            self.log.info("listening for changes on {name} again", name=self._connector.name)
        self._on_wake(None)  # what was notified while not listening is read from the log
        for other in self._others.values():
            other.reconnected()

    def _failed(self, failure: Failure) -> None:
        self._outage_begins(failure.getErrorMessage())

    def _outage_begins(self, reason: str) -> None:
        if not self._running:
            return
        if not self._outage:
            self._outage = True
            self.log.warn("not listening for changes on {name} ({reason}); reconnecting "
                          "every {first:.0f}-{most:.0f} s, the change log is read meanwhile",
                          name=self._connector.name, reason=reason, first=RETRY_FIRST,
                          most=RETRY_MAX)
        self._retry = self._reactor.callLater(self._delay, self._connect)
        self._delay = min(self._delay * 2, RETRY_MAX)

    def _readable(self, socket: _Socket) -> None:
        pgconn = socket.connection.pgconn
        try:
            pgconn.consume_input()
        except psycopg.Error as exc:
            self._lost(socket, one_line(exc))
            return
        highest = 0
        woken = unknown = False
        while (notify := pgconn.notifies()) is not None:
            other = self._others.get(notify.relname.decode("utf-8", "replace"))
            if other is not None:
                other.touched(notify.extra.decode("utf-8", "replace"))
                continue
            woken = True
            seq = _payload_seq(notify.extra.decode("utf-8", "replace"))
            if seq is None:
                unknown = True
            else:
                highest = max(highest, seq)
        if woken:
            self._on_wake(None if unknown else highest)
        if pgconn.status != pq.ConnStatus.OK:
            self._lost(socket, "connection closed")

    def _lost(self, socket: _Socket, reason: str) -> None:
        if socket is not self._socket:
            return
        self._drop()
        self._outage_begins(reason)

    def _drop(self) -> None:
        socket, self._socket = self._socket, None
        if socket is None:
            return
        self._fds.removeReader(socket)
        socket.close()
        self._in_thread(socket.connection.close)
