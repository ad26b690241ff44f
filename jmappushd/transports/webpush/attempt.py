"""One delivery attempt: a slot, the durable record, the POST(s) (C-WP-2, C-WP-3).

:class:`Attempts` is the send path of the delivery service. A StateChange attempt waits
for a slot of the :class:`~.slots.SlotLimiter` first, and only then reads the owed
state, so changes merged while it waited go out in this POST. It is counted and
recorded (attempt number, next due time) before the POST, so a crash never grants an
extra attempt; a record refused (cluster mode: the bucket is another node's now, or
its lease could not be checked) means no POST and no attempt counted. Whatever
happens, the slot is released (``with slot``: not when the
coroutine is finalized instead, see :mod:`~.slots`); any exception but cancellation
(the payload split, the store, a bug) is logged, counted as an ``error`` outcome and
reported as a failed attempt, so the normal retry policy applies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jmappushd.config import PushConfig
from jmappushd.metrics import Metrics
from jmappushd.transports.webpush import payload
from jmappushd.transports.webpush.policy import Outcome
from jmappushd.transports.webpush.sender import Result, Sender
from jmappushd.transports.webpush.slots import SlotLimiter, slot_key
from jmappushd.transports.webpush.state import SubState, settle

__all__ = ["EXPIRED", "Attempts"]

EXPIRED: Literal["expired"] = "expired"  # the slot came after ``expires``: destroy, send nothing


class Attempts:
    """Runs the POSTs of the delivery service; raises nothing but CancelledError."""

    log = Logger()

    def __init__(self, clock: IReactorTime, config: PushConfig, sender: Sender,
                 slots: SlotLimiter, metrics: Metrics,
                 persist: Callable[[SubState], Awaitable[bool]],
                 stopping: Callable[[], bool]) -> None:
        self._clock = clock
        self._config = config
        self._sender = sender
        self._slots = slots
        self._metrics = metrics
        self._persist = persist
        self._stopping = stopping

    def _over(self, sub: SubState) -> bool:
        return sub.gone or self._stopping()

    async def state_change(self, sub: SubState) -> Result | Literal["expired"] | None:
        """The next StateChange attempt of ``sub``: its result, EXPIRED, or None if the
        subscription went away or the service is stopping (nothing to decide)."""
        try:
            with await self._slots.acquire(slot_key(sub.url)):
                if self._over(sub):
                    return None
                if sub.expires <= self._clock.seconds():
                    return EXPIRED  # PS-4: nothing is sent after expires
                return await self._post_owed(sub)
        except CancelledError:
            raise  # destroyed or stopping: not an outcome
        except Exception:
            self.log.failure("subscription {sub_id}: push attempt failed", sub_id=sub.id)
            self._metrics.push_deliveries.labels("state", "error").inc()
            return Result(Outcome.FAILED)

    async def _post_owed(self, sub: SubState) -> Result | None:
        """Count and record the attempt, then POST the owed state, split if too large."""
        now = self._clock.seconds()
        sub.attempts += 1
        if sub.attempts > 1:
            self._metrics.push_retries.inc()
        sub.not_before = max(sub.not_before, now + self._config.push_throttle_s)
        # Recorded before the POST: if we crash now, this is when the retry is due.
        sub.next_attempt = now + self._config.push_attempt_interval_s
        parts, unfit = payload.split_state_change(sub.owed)
        if unfit:
            self.log.warn("subscription {sub_id}: {count} states too large to push",
                          sub_id=sub.id, count=unfit)
        if not await self._persist(sub):
            sub.attempts -= 1  # nothing is sent (another node's now, or no lease check)
            return None
        topic = payload.topic_for(sub.id) if len(parts) == 1 else None
        result = Result(Outcome.DELIVERED)
        for body, states in parts:
            if self._over(sub):
                return None
            result = await self._sender.send(sub, body, "state", topic)
            if self._over(sub):
                return None
            if result.outcome is not Outcome.DELIVERED:
                break
            settle(sub.owed, states)
        return result

    async def verification(self, sub: SubState, body: bytes) -> Result | None:
        """The one PushVerification POST, in a slot like any other; None if it was moot."""
        with await self._slots.acquire(slot_key(sub.url)):
            if self._over(sub):
                return None
            return await self._sender.send(sub, body, "verification")
