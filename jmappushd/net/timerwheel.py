"""Many coarse per-connection timers on one reactor timer.

Every open connection owns one timer, its heartbeat or ping. As reactor
``DelayedCall`` objects, twenty thousand of them cost about 550 bytes each and
keep Twisted's timer heap deep: every re-arm is a push and every expiry a pop,
each comparing Python objects a dozen times. Here a timer is a small object in a
bucket keyed by its due *tick* (``resolution`` seconds); one ``DelayedCall``,
armed only while some timer is pending, wakes up for the earliest non-empty
bucket and runs everything due. Arming and cancelling are dictionary operations.

A timer fires at its due time rounded up to the next tick, never early, and at
most ``resolution`` late; fine for heartbeats, pings and close grace periods.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

# Due times within this much of a tick boundary count as on it (float rounding).
_EPSILON = 1e-6


class WheelTimer:
    """One pending call; ``cancel`` and ``active`` work like an ``IDelayedCall``'s."""

    __slots__ = ("_wheel", "func", "tick")

    def __init__(self, wheel: TimerWheel, tick: int, func: Callable[[], object]) -> None:
        self._wheel = wheel
        self.tick: int | None = tick
        self.func = func

    def active(self) -> bool:
        return self.tick is not None

    def cancel(self) -> None:
        """Forget the call; idempotent, and harmless after it ran."""
        self._wheel._cancel(self)


class TimerWheel:
    """Schedules :class:`WheelTimer` calls on ``clock`` with a shared reactor timer."""

    log = Logger()

    def __init__(self, clock: IReactorTime, resolution: float = 0.1) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self._clock = clock
        self._resolution = resolution
        self._buckets: dict[int, dict[WheelTimer, None]] = {}
        self._armed: IDelayedCall | None = None
        self._armed_tick: int | None = None
        self._firing = False

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def call_later(self, delay: float, func: Callable[[], object]) -> WheelTimer:
        """Call ``func`` once, ``delay`` seconds from now (rounded up to a tick)."""
        due = self._clock.seconds() + max(0.0, delay)
        tick = math.ceil(due / self._resolution - _EPSILON)
        timer = WheelTimer(self, tick, func)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
        bucket[timer] = None
        if not self._firing and (self._armed_tick is None or tick < self._armed_tick):
            self._arm(tick)
        return timer

    def _arm(self, tick: int) -> None:
        if self._armed is not None and self._armed.active():
            self._armed.cancel()
        delay = max(0.0, tick * self._resolution - self._clock.seconds())
        self._armed = self._clock.callLater(delay, self._fire)
        self._armed_tick = tick

    def _cancel(self, timer: WheelTimer) -> None:
        tick, timer.tick = timer.tick, None
        if tick is None:
            return
        bucket = self._buckets.get(tick)
        if bucket is None:
            return
        bucket.pop(timer, None)
        if not bucket:
            del self._buckets[tick]
            if not self._buckets and self._armed is not None:
                # Nothing pending: an idle daemon keeps no timer at all.
                if self._armed.active():
                    self._armed.cancel()
                self._armed = None
                self._armed_tick = None

    def _fire(self) -> None:
        self._armed = None
        self._armed_tick = None
        now_tick = math.floor(self._clock.seconds() / self._resolution + _EPSILON)
        # Only what is due now; calls scheduled while these run wait for a later turn,
        # and the reactor timer is armed once, afterwards, for the earliest bucket of all.
        self._firing = True
        try:
            for tick in sorted(t for t in self._buckets if t <= now_tick):
                bucket = self._buckets.pop(tick)
                for timer in bucket:
                    if timer.tick != tick:
                        continue  # cancelled meanwhile
                    timer.tick = None
                    try:
                        timer.func()
                    except Exception:
                        self.log.failure("timer {func!r} failed", func=timer.func)
        finally:
            self._firing = False
        if self._buckets:
            self._arm(min(self._buckets))
