"""A per-key request budget in fixed windows, for the demo page's endpoints.

Fixed windows aligned on the clock need no timer and keep memory bounded: the
counts are dropped whenever a new window starts, so they never hold more keys
than were active within one window.
"""

from __future__ import annotations

import math

from twisted.internet.interfaces import IReactorTime


class WindowLimit:
    """At most ``limit`` calls per key in each ``window`` seconds."""

    def __init__(self, clock: IReactorTime, limit: int, window: float) -> None:
        self._clock = clock
        self.limit = limit
        self._window = window
        self._start = -math.inf
        self._counts: dict[str, int] = {}

    def check(self, key: str) -> int | None:
        """Count one call; None if allowed, else the seconds until the next window."""
        now = self._clock.seconds()
        start = now - now % self._window
        if start != self._start:
            self._start = start
            self._counts.clear()
        count = self._counts.get(key, 0)
        if count >= self.limit:
            return max(1, math.ceil(start + self._window - now))
        self._counts[key] = count + 1
        return None
