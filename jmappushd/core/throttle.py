"""Leading-edge throttling with coalescing, shared by EventSource and WebSocket.

The first change after a quiet spell goes out at once; changes arriving within
``interval`` seconds of the last send are merged (newest state per account and
type) and sent when the window ends, as one message. While the reader is slow
(the transport paused us) nothing is written and changes keep merging, so the
pending data is bounded by the number of account/type pairs, never by time.
An idle throttle owns no timer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from jmappushd.core.hub import merge

StateMap = Mapping[str, Mapping[str, str]]
Flush = Callable[[StateMap, str], None]


class CoalescingThrottle:
    """Merge changes per account/type and hand them to ``flush`` at most once per window.

    ``flush`` may receive the very mapping passed to ``offer`` (when nothing was
    pending, so no merge was needed): it must treat it as read-only.
    """

    __slots__ = ("_clock", "_flush", "_interval", "_last_sent", "_paused", "_pending",
                 "_timer", "_token")

    def __init__(self, clock: IReactorTime, interval: float, flush: Flush) -> None:
        self._clock = clock
        self._interval = interval
        self._flush = flush
        self._pending: dict[str, dict[str, str]] = {}
        self._token = ""
        self._last_sent: float | None = None
        self._timer: IDelayedCall | None = None
        self._paused = False

    @property
    def pending(self) -> dict[str, dict[str, str]]:
        return self._pending

    def offer(self, changed: StateMap, token: str) -> None:
        """Add a (filtered, non-empty) change; send now or when the window ends."""
        if not self._pending and not self._paused and self._timer is None:
            # Fast path (the common case): nothing to merge with, so no copy.
            if self._interval <= 0:
                self._token = token
                self._flush(changed, token)
                return
            now = self._clock.seconds()
            if self._last_sent is None or now >= self._last_sent + self._interval:
                self._token = token
                self._last_sent = now
                self._flush(changed, token)
                return
        merge(self._pending, changed)
        self._token = token
        self._maybe_send()

    def _maybe_send(self) -> None:
        if not self._pending or self._paused or self._timer is not None:
            return
        now = self._clock.seconds()
        if self._interval > 0 and self._last_sent is not None:
            due = self._last_sent + self._interval
            if now < due:
                self._timer = self._clock.callLater(due - now, self._window_ended)
                return
        self._send(now)

    def _window_ended(self) -> None:
        self._timer = None
        self._maybe_send()

    def _send(self, now: float) -> None:
        pending, self._pending = self._pending, {}
        self._last_sent = now
        self._flush(pending, self._token)

    def pause(self) -> None:
        """The reader is slow: hold everything (merged) until ``resume``."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._maybe_send()

    def cancel(self) -> None:
        """Drop the timer and pending data (the connection is gone)."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self._pending = {}
