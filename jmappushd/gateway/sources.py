"""Where the gateway learns that an upstream account changed (``[upstream] changes``).

Each source only says *which account* changed; :class:`~jmappushd.gateway.states.StateReader`
then reads the real states. ``publish`` needs no source (the admin ``/publish`` goes straight
to the hub, as standalone); ``cyrus-notify`` listens on a Unix datagram socket;
``poll`` re-reads every account with local interest (listeners or push subscriptions) every
``poll-interval``. (``eventsource``, one upstream stream per watched account, builds on the
same seam.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUNIXDatagram
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from jmappushd.gateway.cyrus_notify import (
    MAX_DATAGRAM,
    CyrusNotifyProtocol,
    NotifySocketError,
    prepare_socket_path,
)

__all__ = ["CyrusNotifySource", "PollSource"]

# The socket must be writable by the Cyrus user, which is not the daemon's; what may reach
# it is decided by the permissions of the folder it is in (document: a folder only the
# daemon and Cyrus can enter).
SOCKET_MODE = 0o666


class CyrusNotifySource(Service):
    """Binds ``notify-socket`` and turns every Cyrus event datagram into ``changed(account)``."""

    log = Logger()

    def __init__(self, reactor: IReactorUNIXDatagram, path: str,
                 changed: Callable[[str], None],
                 where: str = "[upstream] notify-socket") -> None:
        """``where`` starts every start-up error (the config file and key)."""
        self._reactor = reactor
        self._path = path
        self._where = where
        self.protocol = CyrusNotifyProtocol(changed)
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        """Bind at start; a path that is not a stale socket, or cannot be bound, stops start-up
        with one line naming it."""
        prepare_socket_path(self._path, self._where)
        try:
            self._port = self._reactor.listenUNIXDatagram(
                self._path, self.protocol, maxPacketSize=MAX_DATAGRAM, mode=SOCKET_MODE)
        except CannotListenError as e:
            reason = e.socketError
            text = reason.strerror if isinstance(reason, OSError) else str(reason)
            raise NotifySocketError(f"{self._where}: cannot bind {self._path}: {text}"
                                    ) from None
        os.chmod(self._path, SOCKET_MODE)  # listenUNIXDatagram's mode is subject to umask
        super().startService()
        self.log.info("Listening for Cyrus events on {path}", path=self._path)

    def stopService(self) -> None:
        super().stopService()
        port, self._port = self._port, None
        if port is not None:
            port.stopListening()
        with contextlib.suppress(OSError):
            prepare_socket_path(self._path)


class PollSource(Service):
    """Every ``interval`` seconds, ``changed(account)`` for every account with local interest.

    One timer for the whole daemon, not one per account; a tick with nothing watched costs
    nothing but the call. The state reader's debounce turns the tick's burst into one read
    per account.
    """

    def __init__(self, clock: IReactorTime, interval: float,
                 watched: Callable[[], Iterable[str]], changed: Callable[[str], None]) -> None:
        self._watched = watched
        self._changed = changed
        self._interval = interval
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    def tick(self) -> None:
        for account in list(self._watched()):
            self._changed(account)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
