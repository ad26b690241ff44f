"""The delivery scheduler's timers: a tick only while something waits, one deadline timer.

DESIGN: idle is free. A subscription with something scheduled (a throttled change, a
retry, a Retry-After, a back-off) is in :attr:`Scheduler.due`; the tick, every
``push-retry-interval``, runs only while that set is non-empty, and hands each member to
``on_due``. Expiry and verification deadlines live in a heap with one ``callLater``
armed at the earliest; it hands each deadline reached to ``on_deadline``. Every idle
verified subscription has an expiry, so that one timer is all an idle service owns.
Callbacks never escape: an exception is logged and the timers keep going.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Scheduler"]

T = TypeVar("T")


class Scheduler(Generic[T]):
    """Owns the tick and the deadline timer of one delivery service; ``stop`` cancels both."""

    log = Logger()

    def __init__(self, clock: IReactorTime, interval: float,
                 on_due: Callable[[T, float], None],
                 on_deadline: Callable[[str, float], None]) -> None:
        self._clock = clock
        self._interval = interval
        self._on_due = on_due
        self._on_deadline = on_deadline
        self.due: set[T] = set()
        self._deadlines: list[tuple[float, str]] = []
        self._tick_call: IDelayedCall | None = None
        self._deadline_call: IDelayedCall | None = None
        self._stopped = False

    # -- the tick --

    def add(self, item: T) -> None:
        """``item`` has something scheduled: make sure the tick runs."""
        self.due.add(item)
        self._arm_tick()

    def discard(self, item: T) -> None:
        self.due.discard(item)

    def _arm_tick(self) -> None:
        if self._tick_call is None and self.due and not self._stopped:
            self._tick_call = self._clock.callLater(self._interval, self._fire_tick)

    def _fire_tick(self) -> None:
        self._tick_call = None
        self.tick()
        self._arm_tick()  # unless a callback already did: never two ticks

    def tick(self) -> None:
        """Hand every scheduled item to ``on_due``; never raises."""
        now = self._clock.seconds()
        for item in list(self.due):
            try:
                self._on_due(item, now)
            except Exception:
                self.log.failure("push scheduler: handling {item} failed", item=item)

    # -- deadlines --

    def add_deadline(self, when: float, key: str) -> None:
        """Call ``on_deadline(key, now)`` once ``when`` is reached."""
        heapq.heappush(self._deadlines, (when, key))
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        if self._stopped or not self._deadlines:
            return
        when = self._deadlines[0][0]
        timer = self._deadline_call
        if timer is not None:
            if timer.getTime() <= when:
                return
            timer.cancel()
        delay = max(0.0, when - self._clock.seconds())
        self._deadline_call = self._clock.callLater(delay, self._fire_deadlines)

    def _fire_deadlines(self) -> None:
        self._deadline_call = None
        now = self._clock.seconds()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, key = heapq.heappop(self._deadlines)
            try:
                self._on_deadline(key, now)
            except Exception:
                self.log.failure("push scheduler: deadline of {key} failed", key=key)
        self._arm_deadline()

    # -- lifecycle --

    @property
    def timers(self) -> int:
        """How many timers are armed (0, 1 or 2): what idle costs."""
        return (self._tick_call is not None) + (self._deadline_call is not None)

    def stop(self) -> None:
        """Cancel both timers; nothing is armed again."""
        self._stopped = True
        for timer in (self._tick_call, self._deadline_call):
            if timer is not None and timer.active():
                timer.cancel()
        self._tick_call = self._deadline_call = None
