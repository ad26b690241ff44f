"""What a listener does at the process's descriptor limit: shed connections, log once.

When every descriptor is taken, ``accept()`` fails with ``EMFILE`` and leaves the
connection queued; the listening socket stays readable, so a level-triggered poller
reports it again at once. Twisted keeps one spare descriptor for this, but after a
single failed re-reservation (another thread took the slot) it only logs and
returns, and the reactor spins at full CPU writing a log line per turn; while the
spare works it logs every connection it closes. Here one :class:`DescriptorGuard`,
shared by the daemon's listeners, holds a spare descriptor: at the limit it gives it
up, accepts and closes what is queued (the client sees the connection end instead of
hanging), and takes it back. When that is impossible (no spare, or the system-wide
table is full) the listener stops reading for a short pause instead of spinning. An
exhaustion is logged once when it begins (and at most once per ``quiet`` seconds),
with the count of connections closed meanwhile logged once it ends.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

EXHAUSTION_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""``accept()`` errors meaning "no descriptor or memory for another connection"."""

PAUSE_S = 0.1
"""How long a listener stops reading when it can neither accept nor shed."""

QUIET_S = 60.0
"""At most one exhaustion warning per this many seconds."""


def _open_devnull() -> int:
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


class DescriptorReserve:
    """One spare descriptor, given up for a moment to accept (and close) a connection."""

    def __init__(self, opener: Callable[[], int] = _open_devnull,
                 closer: Callable[[int], None] = os.close) -> None:
        self._opener = opener
        self._closer = closer
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def hold(self) -> bool:
        """Take the spare descriptor if it is not held; False when none is free."""
        if self._fd is None:
            try:
                self._fd = self._opener()
            except OSError:
                return False
        return True

    def release(self) -> None:
        """Give the spare back to the process, so that one ``accept()`` can succeed."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._closer(fd)


class Closable(Protocol):
    def close(self) -> None: ...


class Accepting(Protocol):
    """What :meth:`DescriptorGuard.shed` needs from a listening socket."""

    def accept(self) -> tuple[Closable, object]: ...


class DescriptorGuard:
    """The spare descriptor and the exhaustion log of all of one daemon's listeners."""

    log = Logger()

    def __init__(self, clock: IReactorTime, reserve: DescriptorReserve | None = None,
                 pause: float = PAUSE_S, quiet: float = QUIET_S) -> None:
        self.clock = clock
        self.reserve = reserve if reserve is not None else DescriptorReserve()
        self.pause = pause
        self.quiet = quiet
        self.shed_total = 0
        self._exhausted = False
        self._logged = False  # this exhaustion's warning was logged (its end will be too)
        self._shed_unlogged = 0
        self._warned_at: float | None = None

    def start(self) -> None:
        """Take the spare descriptor (at start-up, while descriptors are plentiful)."""
        self.reserve.hold()

    def stop(self) -> None:
        self.reserve.release()

    def shed(self, listener: Accepting, most: int) -> bool:
        """At the limit: accept and close up to ``most`` queued connections.

        Returns whether the listener may keep reading: False when nothing could be
        shed or no spare is held afterwards, so the next ``EMFILE`` could not be
        handled either and the caller must pause instead of spinning.
        """
        closed = 0
        if self.reserve.held:
            # Nothing in this block may open a descriptor (no logging): the freed slot
            # is for the queued connections, one at a time.
            self.reserve.release()
            try:
                for _ in range(most):
                    try:
                        client, _address = listener.accept()
                    except OSError:
                        break  # none left (EAGAIN), or the slot was taken meanwhile
                    client.close()
                    closed += 1
            finally:
                self.reserve.hold()
        self.shed_total += closed
        self._shed_unlogged += closed
        return closed > 0 and self.reserve.held

    def exhausted(self, error: int) -> None:
        """``accept()`` failed with ``error``: log it if this begins an exhaustion."""
        if self._exhausted:
            return
        self._exhausted = True
        now = self.clock.seconds()
        self._logged = self._warned_at is None or now - self._warned_at >= self.quiet
        if not self._logged:
            return
        self._warned_at = now
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.log.warn(
            "cannot accept connections: {error} (open files limit {soft}); new connections "
            "are closed or delayed until descriptors are free again",
            error=errno.errorcode.get(error, str(error)), soft=soft)

    def accepted(self) -> None:
        """A connection was accepted normally: an exhaustion, if any, has ended."""
        if self._exhausted:
            self._exhausted = False
            if self._logged and self._shed_unlogged:
                self.log.info("accepting connections again; {count} were closed at the "
                              "descriptor limit", count=self._shed_unlogged)
                self._shed_unlogged = 0
