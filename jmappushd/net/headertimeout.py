"""Deadlines for the slow parts of one HTTP/1.1 request: its head, then its body.

The connection's idle timeout restarts on every byte, so a client sending one byte a
second keeps a connection for as long as its 16 KB of headers last (about 4.5 h),
and a body for as long as it likes. A :class:`RequestDeadline` belongs to one
connection and holds at most one timer, only while a request is arriving: from the
first byte of the request until its headers are complete (``[server]
header-timeout``), then, when a body follows, until the body is complete (the
channel's idle timeout, counted once for the whole body instead of per byte). Idle
connections between requests hold none. Timers go on the daemon's timer wheel:
arming and cancelling one per request is a couple of dictionary operations, and ten
thousand slow clients add ten thousand small entries, not ten thousand reactor
``DelayedCall``\\ s.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from jmappushd.net.timerwheel import TimerWheel, WheelTimer


class Phase(Enum):
    """Which part of the request was too slow."""

    HEAD = "head"
    BODY = "body"


class RequestDeadline:
    """The one deadline of a connection's request in progress (none while idle)."""

    __slots__ = ("_body", "_expired", "_head", "_timer", "_timers", "phase")

    def __init__(self, timers: TimerWheel, head: float, body: float | None,
                 expired: Callable[[Phase], object]) -> None:
        self._timers = timers
        self._head = head
        self._body = body
        self._expired = expired
        self._timer: WheelTimer | None = None
        self.phase: Phase | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def head_started(self) -> None:
        """A request's first byte arrived (no-op while its deadline already runs)."""
        if self.phase is None and self._head > 0:
            self._arm(Phase.HEAD, self._head)

    def head_done(self, body_follows: bool) -> None:
        """The headers are complete; the body's deadline starts if a body follows."""
        self.cancel()
        if body_follows and self._body:
            self._arm(Phase.BODY, self._body)

    def cancel(self) -> None:
        """The request arrived in full, or the connection is gone."""
        timer, self._timer = self._timer, None
        self.phase = None
        if timer is not None:
            timer.cancel()

    def _arm(self, phase: Phase, delay: float) -> None:
        self.phase = phase
        self._timer = self._timers.call_later(delay, self._fire)

    def _fire(self) -> None:
        phase = self.phase
        self._timer = None
        self.phase = None
        if phase is not None:
            self._expired(phase)
