"""Caps on Web Push POSTs in flight: overall and per push-service origin (DESIGN: bounded).

One publish can make every subscription due at once; without a cap that is one
request per subscription, all at the same moment, most of them to the same few push
services. :class:`SlotLimiter` lets a POST start only while fewer than ``total`` are
in flight overall and fewer than ``per_origin`` to its origin (scheme, host, port).
The others wait in arrival order: each origin keeps a FIFO queue, and a heap of the
queues' head positions picks, among the origins with room, the oldest waiter first,
so one saturated origin never holds back another.

A waiter is a Deferred that fires with a :class:`Slot`; cancelling it leaves the
queue and holds nothing. A slot is released once (releasing again does nothing), so
a POST that succeeds, fails, times out or is cancelled frees exactly what it held.
Granting is a loop, not a recursion: a waiter whose continuation releases its slot at
once (a synchronous failure) does not deepen the stack.

``with slot:`` releases on every exit but one: GeneratorExit, a coroutine being closed
instead of resumed. That happens only when the garbage collector finalizes a service
abandoned with POSTs in flight (a live service reaches every coroutine it started
through its Deferreds). Releasing there would grant the slot to a waiter and resume its
coroutine from inside the finalizer: one the collector already closed raises "cannot
reuse already awaited coroutine"; one not yet closed would start a POST. The limiter is
garbage too, so nothing is lost by keeping the slot.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from types import TracebackType

from twisted.internet.defer import Deferred, succeed

from jmappushd.transports.webpush.vapid import OriginCache

__all__ = ["Slot", "SlotLimiter", "slot_key"]

_ORIGINS = OriginCache(4096)


def slot_key(url: str) -> str:
    """The origin a POST to ``url`` counts against; the URL itself if it has none."""
    try:
        return _ORIGINS(url)
    except ValueError:
        return url  # never the case for a validated subscription URL; still capped


class Slot:
    """The right to have one POST in flight to ``origin``."""

    __slots__ = ("_limiter", "origin")

    def __init__(self, limiter: SlotLimiter, origin: str) -> None:
        self._limiter: SlotLimiter | None = limiter
        self.origin = origin

    @property
    def held(self) -> bool:
        return self._limiter is not None

    def release(self) -> None:
        """Give the slot back; idempotent, so every exit path may call it."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self.origin)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Release, unless the holder is being finalized (see the module docstring)."""
        if kind is not GeneratorExit:
            self.release()


class _Waiter:
    __slots__ = ("cancelled", "d", "origin", "seq")

    def __init__(self, seq: int, origin: str) -> None:
        self.seq = seq
        self.origin = origin
        self.cancelled = False
        self.d: Deferred[Slot] = Deferred(lambda _: self._cancel())

    def _cancel(self) -> None:
        self.cancelled = True


class _Queue:
    """One origin's waiters in arrival order; withdrawn ones are skipped, then pruned."""

    __slots__ = ("dead", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[_Waiter] = deque()
        self.dead = 0

    def head(self) -> _Waiter | None:
        waiters = self.waiters
        while waiters and waiters[0].cancelled:
            waiters.popleft()
            self.dead -= 1
        return waiters[0] if waiters else None

    def withdrawn(self) -> None:
        """Keep withdrawn waiters from piling up behind a long-blocked head."""
        self.dead += 1
        if self.dead > 32 and self.dead * 2 > len(self.waiters):
            self.waiters = deque(w for w in self.waiters if not w.cancelled)
            self.dead = 0


class SlotLimiter:
    """At most ``total`` slots held overall and ``per_origin`` per origin; FIFO waiters."""

    def __init__(self, total: int, per_origin: int) -> None:
        if total < 1 or per_origin < 1:
            raise ValueError("slot limits must be positive")
        self._total = total
        self._per_origin = per_origin
        self._held = 0
        self._by_origin: dict[str, int] = {}
        self._queues: dict[str, _Queue] = {}
        self._ready: list[tuple[int, str]] = []  # (head seq, origin) of origins with room
        self._in_ready: set[str] = set()
        self._seq = itertools.count()
        self._waiting = 0
        self._granting = False

    @property
    def in_flight(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return self._waiting

    def in_flight_to(self, origin: str) -> int:
        return self._by_origin.get(origin, 0)

    def acquire(self, origin: str) -> Deferred[Slot]:
        """A slot for ``origin``: at once if there is room and nobody is ahead, else queued.

        Cancelling the Deferred before it fires leaves the queue without holding anything.
        """
        if (not self._granting and origin not in self._queues and self._held < self._total
                and self._by_origin.get(origin, 0) < self._per_origin):
            return succeed(self._take(origin))
        waiter = _Waiter(next(self._seq), origin)
        queue = self._queues.get(origin)
        if queue is None:
            queue = self._queues[origin] = _Queue()
        queue.waiters.append(waiter)
        self._waiting += 1
        waiter.d.addErrback(self._forget, waiter)
        self._mark_ready(origin)
        self._grant()
        return waiter.d

    def _forget(self, failure: object, waiter: _Waiter) -> object:
        """A cancelled waiter: count it out; its queue entry is skipped later."""
        self._waiting -= 1
        queue = self._queues.get(waiter.origin)
        if queue is not None:
            queue.withdrawn()
            if queue.head() is None:
                del self._queues[waiter.origin]
        return failure

    def _take(self, origin: str) -> Slot:
        self._held += 1
        self._by_origin[origin] = self._by_origin.get(origin, 0) + 1
        return Slot(self, origin)

    def _release(self, origin: str) -> None:
        self._held -= 1
        left = self._by_origin[origin] - 1
        if left:
            self._by_origin[origin] = left
        else:
            del self._by_origin[origin]
        self._mark_ready(origin)
        self._grant()

    def _mark_ready(self, origin: str) -> None:
        """Put the origin's queue head in the heap if the origin has room."""
        if origin in self._in_ready or self._by_origin.get(origin, 0) >= self._per_origin:
            return
        queue = self._queues.get(origin)
        head = queue.head() if queue is not None else None
        if head is None:
            return
        heapq.heappush(self._ready, (head.seq, origin))
        self._in_ready.add(origin)

    def _grant(self) -> None:
        """Hand free slots to the oldest eligible waiters; re-entrant calls just return."""
        if self._granting:
            return
        self._granting = True
        try:
            while self._ready and self._held < self._total:
                seq, origin = heapq.heappop(self._ready)
                self._in_ready.discard(origin)
                queue = self._queues.get(origin)
                head = queue.head() if queue is not None else None
                if queue is None or head is None:
                    self._queues.pop(origin, None)
                    continue
                if head.seq != seq:  # its old head was withdrawn: take the real place
                    self._mark_ready(origin)
                    continue
                queue.waiters.popleft()
                self._waiting -= 1
                if queue.head() is None:
                    del self._queues[origin]
                slot = self._take(origin)
                self._mark_ready(origin)
                head.d.callback(slot)
        finally:
            self._granting = False
