"""The Web Push delivery service: throttled, retried, durable (RFC 8620 §7.2, C-WP-*).

Flow per verified subscription: the hub hands it changes for its user's accounts; the
wanted types are merged into ``owed``. A POST goes out at once when nothing is in
flight, no retry, Retry-After or back-off is pending and the last POST is
``push-throttle`` old; otherwise the change waits, merged, for the scheduler tick
(every ``push-retry-interval``, only while something is scheduled), which also sends
retries. A failed StateChange is retried up to ``push-attempts-max`` attempts
``push-attempt-interval`` apart (a longer Retry-After wins); after the last one it is
dropped (logged and counted) but kept owed, so the next StateChange carries everything
since the last success, and the next notification waits a back-off that doubles with
each notification dropped in a row (:func:`~.policy.backoff_delay`).

Every POST takes a slot first (:mod:`~.slots`, :mod:`~.attempt`); a subscription waiting
for one is busy, so changes merge into the POST it will make. ``busy`` ends in a
``finally``: an unexpected exception is a failed attempt, never a wedged subscription.
Timers (:mod:`~.schedule`): the tick while something waits, one deadline timer.

Durability: before every POST the attempt is recorded with the owed state and the
change sequence number it covers; results are recorded too. Changes merged after
the last record are found again at start with ``changes_since(last_sent_seq)``. So a
crash loses no change and never grants an extra attempt.

Ownership (:mod:`~.ownership`): only subscriptions this node delivers are tracked.
Alone, that is all of them; in cluster mode, those of the buckets it holds leases on
(:mod:`~.leases`), which hands buckets over with :meth:`DeliveryService.acquire` and
:meth:`DeliveryService.release`. The record before a POST is then also the lease check:
no record, no POST. A node taking a bucket over loads the rows as the last owner
recorded them, so the attempt budget and the last delivered position carry over.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jmappushd.config import PushConfig
from jmappushd.core.hub import Change, Hub, restrict
from jmappushd.metrics import Metrics
from jmappushd.store.interface import IStore
from jmappushd.store.records import PushSubscription
from jmappushd.transports.webpush import payload
from jmappushd.transports.webpush.attempt import EXPIRED, Attempts
from jmappushd.transports.webpush.ownership import Everything, Ownership, Saved
from jmappushd.transports.webpush.policy import DEFAULT_RATE_LIMIT_DELAY, Outcome, backoff_delay
from jmappushd.transports.webpush.schedule import Scheduler
from jmappushd.transports.webpush.sender import Result, Sender
from jmappushd.transports.webpush.slots import SlotLimiter
from jmappushd.transports.webpush.state import HubListeners, SubState, merge

__all__ = ["DeliveryService"]


class DeliveryService:
    """Owns every subscription's delivery state, the scheduler tick and in-flight POSTs."""

    log = Logger()

    def __init__(self, store: IStore, hub: Hub, clock: IReactorTime, config: PushConfig,
                 sender: Sender, metrics: Metrics, slots: SlotLimiter | None = None,
                 jitter: Callable[[], float] = random.random,
                 ownership: Ownership | None = None) -> None:
        self._store = store
        self._ownership: Ownership = ownership if ownership is not None else Everything(store)
        self._hub = hub
        self._clock = clock
        self._config = config
        self._sender = sender
        self._metrics = metrics
        self._subs: dict[str, SubState] = {}
        self._listeners = HubListeners(hub, store)
        self._schedule: Scheduler[SubState] = Scheduler(
            clock, config.push_retry_interval_s, self._maybe_send_due, self._deadline)
        self._verifications: set[defer.Deferred[None]] = set()
        self._writes: set[defer.Deferred[object]] = set()  # persists and deletes under way
        self._attempts = Attempts(
            clock, config, sender,
            slots or SlotLimiter(config.max_in_flight, config.max_in_flight_per_origin),
            metrics, self._persist, self.stopping)
        self._jitter = jitter
        self._started = False
        self._stopping = False
        self._refreshing: defer.Deferred[None] | None = None
        self._recovering: defer.Deferred[None] | None = None
        self._refresh_again = False
        gauge = metrics.push_subscriptions
        gauge.labels("verified").set_function(lambda: self.count(verified=True))
        gauge.labels("unverified").set_function(lambda: self.count(verified=False))

    # -- lifecycle --

    async def start(self, records: list[PushSubscription]) -> None:
        """Track stored subscriptions and start delivering; missed changes are recovered in
        the background (method calls need not wait for that)."""
        for record in records:
            self._track(record)
        verified = [sub for sub in self._subs.values() if sub.verified]
        for sub in verified:
            if self._stopping:
                return  # stopped while accounts loaded: nothing may start (or query) now
            await self._listeners.activate(sub, self.stopping)
        if self._stopping:
            return
        self._started = True
        if self._refresh_again:  # credentials changed while starting (see invalidated)
            self._refresh_again = False
            self.invalidated()
        self._recovering = defer.ensureDeferred(self._recover_all(verified))
        self._recovering.addErrback(self._log_failure)
        self.log.info("push delivery started with {count} subscriptions", count=len(self._subs))

    async def _recover_all(self, subs: list[SubState]) -> None:
        for sub in subs:
            if self._stopping:
                return
            if not sub.gone:
                await self._recover(sub)

    # -- cluster mode: buckets handed over by the lease keeper --

    async def acquire(self, records: list[PushSubscription]) -> None:
        """Start delivering subscriptions this node now owns, from their stored state:
        retries keep their count and due time; changes since ``last_sent_seq`` merge in."""
        if not self._started or self._stopping:
            return
        fresh = [sub for record in records if record.id not in self._subs
                 and (sub := self._track(record)) is not None]
        for sub in fresh:
            if sub.verified and not self._stopping:
                await self._listeners.activate(sub, self.stopping)
        for sub in fresh:
            if sub.verified and not sub.gone and not self._stopping:
                await self._recover(sub)

    async def release(self, owned: Callable[[str], bool], drain: bool) -> list[str]:
        """Stop delivering every subscription ``owned`` says no to; returns their ids.

        ``drain`` (a bucket handed back while still held): POSTs in flight finish and
        their outcome is recorded before this returns, so the next owner starts from
        it. Without (the lease is lost already): they are cancelled at once; the next
        owner may repeat the newest state, never an older one."""
        leaving = [sub for sub in self._subs.values() if not owned(sub.id)]
        for sub in leaving:
            sub.leaving = True
            self._listeners.discard(sub)  # no new offers; what is owed stays recorded
            self._schedule.discard(sub)
        if drain:
            in_flight = [sub.request for sub in leaving if sub.request is not None]
            if in_flight:
                await defer.DeferredList(in_flight, consumeErrors=True)
            while self._writes:
                await defer.DeferredList(list(self._writes), consumeErrors=True)
            for sub in leaving:
                if sub.dirty and not sub.gone:
                    await self._persist(sub)
        for sub in leaving:
            if self._subs.get(sub.id) is sub:
                self._remove(sub)
        return [sub.id for sub in leaving]

    async def reload(self, sub_id: str, record: PushSubscription | None) -> None:
        """The store says ``sub_id`` changed (created, updated or deleted on any node)."""
        sub = self._subs.get(sub_id)
        if record is None:
            if sub is not None:
                self.log.info("subscription {sub_id} was destroyed elsewhere", sub_id=sub_id)
                self._remove(sub)
        elif sub is not None:
            await self.updated(record)
        elif self._ownership.owns(sub_id):
            await self.acquire([record])

    async def stop(self) -> None:
        """Stop the timers, cancel in-flight and waiting POSTs, record what is still owed.

        Recovery, a credentials refresh and store writes under way are waited for, not
        cancelled: once this returns nothing the service started is still running."""
        self._stopping = True
        self._schedule.stop()
        if self._recovering is not None:
            await self._recovering
        if self._refreshing is not None:
            await self._refreshing
        for d in [s.request for s in self._subs.values() if s.request] + [*self._verifications]:
            d.cancel()
        for sub in self._subs.values():
            if sub.hub_sub is not None:
                sub.hub_sub.cancel()
        for sub in [sub for sub in self._subs.values() if sub.dirty]:
            self._write(self._persist(sub))
        while self._writes:
            await defer.DeferredList(list(self._writes))

    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (work awaiting the store asks after the await)."""
        return self._stopping

    def count(self, verified: bool) -> int:
        return sum(1 for s in self._subs.values() if s.verified == verified)

    def tracked(self) -> list[str]:
        """The ids of the subscriptions this node delivers."""
        return list(self._subs)

    def get(self, sub_id: str) -> SubState | None:
        return self._subs.get(sub_id)

    # -- changes from the methods layer --

    def created(self, record: PushSubscription) -> None:
        """A new subscription: send its one PushVerification now (PS-13, C-PS-9).

        The node that created it sends it; it tracks the subscription only if it
        delivers it (cluster mode: the bucket's owner learns of it from the store)."""
        sub = self._track(record) if self._ownership.owns(record.id) else self._state(record)
        if sub is None:
            return
        body = payload.verification(record.id, record.verification_code)
        d = defer.ensureDeferred(self._verify(sub, body))
        self._verifications.add(d)
        d.addErrback(self._log_failure)
        d.addBoth(lambda _: self._verifications.discard(d))

    async def updated(self, record: PushSubscription) -> None:
        """Apply a /set update: expiry, types, and activation once verified (PS-15, PS-16)."""
        sub = self._subs.get(record.id)
        if sub is None:
            return
        sub.types = None if record.types is None else frozenset(record.types)
        if record.expires != sub.expires:
            sub.expires = record.expires
            self._schedule.add_deadline(record.expires, sub.id)
        if record.verified and not sub.verified:
            sub.verified = True
            sub.seq = max(sub.seq, record.delivery.last_sent_seq)
            await self._listeners.activate(sub, self.stopping)

    def forget_other_keys(self, key_ids: Collection[str]) -> None:
        """Stop delivering subscriptions of VAPID keys the ring no longer holds: they
        were destroyed with their key (here, or by another node's rotation)."""
        for sub in [s for s in self._subs.values() if s.key_id not in key_ids]:
            self.log.info("subscription {sub_id} ended with VAPID key {key_id}",
                          sub_id=sub.id, key_id=sub.key_id)
            self._remove(sub)

    def forget(self, sub_id: str) -> None:
        """The subscription was destroyed through the API (or elsewhere): stop at once."""
        sub = self._subs.get(sub_id)
        if sub is not None:
            self._remove(sub)

    def invalidated(self) -> None:
        """Credentials or grants may have changed: re-check subscriptions and accounts
        with the shared policy (a password change keeps them; see ``state``)."""
        if self._stopping:
            return
        if not self._started or self._refreshing is not None:
            # Before start completes the loaded subscriptions may predate the change:
            # refresh once start is done. During a refresh: once more after it.
            self._refresh_again = True
            return
        self._refreshing = defer.ensureDeferred(self._refresh())

        def done(result: object) -> None:
            self._refreshing = None
            if self._refresh_again:
                self._refresh_again = False
                self.invalidated()

        self._refreshing.addErrback(lambda f: self.log.failure("push refresh failed", f))
        self._refreshing.addBoth(done)

    # -- tracking --

    def _state(self, record: PushSubscription) -> SubState | None:
        try:
            return SubState(self, record)
        except ValueError:
            self.log.warn("subscription {sub_id} has unusable keys; destroying it",
                          sub_id=record.id)
            self._write(self._delete(record.id))
            return None

    def _track(self, record: PushSubscription) -> SubState | None:
        sub = self._state(record)
        if sub is None:
            return None
        self._subs[sub.id] = sub
        self._listeners.add(sub)
        self._schedule.add_deadline(sub.expires, sub.id)
        if not sub.verified:
            self._schedule.add_deadline(sub.created + self._config.push_verify_timeout_s, sub.id)
        if sub.next_attempt is not None:
            self._schedule.add(sub)
        return sub

    async def _recover(self, sub: SubState) -> None:
        """Merge changes recorded after the last durable record of this subscription.

        ``as_of`` is the hub's contiguous watermark before the query: every change up
        to it is in the answer or was offered live (the subscription listens already).
        Nothing assumes the store answers in call order: a state merged live while
        the query runs wins over the answer for its account and type; were the answer
        newer, its change is still to come live.
        """
        as_of = self._hub.last_seq
        if sub.seq >= as_of:
            return
        before = {a: dict(t) for a, t in sub.owed.items()}
        changed = await self._store.changes_since(sub.seq, sub.accounts)
        sub.seq = max(sub.seq, as_of)
        if sub.gone:
            return
        live = {(a, t) for a, types in sub.owed.items() for t, state in types.items()
                if before.get(a, {}).get(t) != state}
        wanted = {a: kept for a, types in restrict(changed, sub.accounts, sub.types).items()
                  if (kept := {t: s for t, s in types.items() if (a, t) not in live})}
        if wanted:
            merge(sub.owed, wanted)
            sub.dirty = True
            self._want_send(sub, self._clock.seconds())

    async def _refresh(self) -> None:
        existing = await self._store.push_subscription_ids()
        for sub in list(self._subs.values()):
            if sub.id not in existing:
                self.log.info("subscription {sub_id} was deleted (credentials revoked)",
                              sub_id=sub.id)
                self._remove(sub)
        for sub, why in await self._listeners.revalidate(self.stopping):
            if not sub.gone:
                self._destroy(sub, f"credentials revoked ({why})")

    # -- the hub side --

    def offer(self, sub: SubState, change: Change) -> None:
        """A change for one of the subscription's accounts (called by the hub)."""
        if change.seq <= sub.seq or sub.gone or not sub.verified:
            return
        sub.seq = max(sub.seq, change.position)  # never past a gap the hub still has
        wanted = self._listeners.views.restricted(change, sub.accounts, sub.types)
        if not wanted:
            return
        merge(sub.owed, wanted)
        sub.dirty = True
        now = self._clock.seconds()
        if sub.expires <= now:
            self._destroy(sub, "expired")
            return
        self._want_send(sub, now)

    def _want_send(self, sub: SubState, now: float) -> None:
        """Send now (leading edge) or leave it merged for the tick (PS-22, C-WP-5)."""
        if sub.busy or sub.next_attempt is not None:
            return  # merged into the pending send or retry
        when = max(now, sub.not_before)
        if when <= now:
            self._send(sub)
        else:
            sub.next_attempt = when
            self._schedule.add(sub)

    # -- the scheduler --

    def tick(self) -> None:
        """Send what is due (the scheduler calls this while something is scheduled)."""
        self._schedule.tick()

    def _deadline(self, sub_id: str, now: float) -> None:
        """C-PS-2, C-PS-8: expired and unverified-too-long subscriptions are destroyed."""
        sub = self._subs.get(sub_id)
        if sub is None:
            return
        if sub.expires <= now:
            self._destroy(sub, "expired")
        elif not sub.verified and sub.created + self._config.push_verify_timeout_s <= now:
            self._destroy(sub, "not verified in time")

    def _maybe_send_due(self, sub: SubState, now: float) -> None:
        if sub.busy or sub.next_attempt is None:
            self._schedule.discard(sub)
            return
        if sub.next_attempt > now:
            return
        if not sub.owed:
            sub.next_attempt = None
            sub.attempts = 0
            self._schedule.discard(sub)
            self._persist_later(sub)
        elif sub.attempts >= self._config.push_attempts_max:
            self._drop(sub, "attempts")  # its last attempt was in flight at a crash
            self._persist_later(sub)
        else:
            self._send(sub)

    # -- sending --

    def _send(self, sub: SubState) -> None:
        """Start the subscription's next POST; it may first wait for a slot, busy."""
        if sub.leaving:
            return  # handed to another node: it sends what is owed
        sub.busy = True
        self._schedule.discard(sub)
        d = defer.ensureDeferred(self._deliver(sub))
        if not d.called:  # else it is over already, and may have started the next one
            sub.request = d
        d.addErrback(self._log_failure)

    async def _deliver(self, sub: SubState) -> None:
        """One attempt, then its consequences; ``busy`` ends whatever happened."""
        try:
            result = await self._attempts.state_change(sub)
        finally:
            sub.busy = False
            sub.request = None
        if sub.gone or self._stopping:
            return
        if result is None:  # not recorded, so not sent: try again when due
            if not sub.leaving and sub.next_attempt is not None:
                self._schedule.add(sub)
        elif result == EXPIRED:
            self._destroy(sub, "expired")
        elif isinstance(result, Result):
            self._settle(sub, result)

    def _settle(self, sub: SubState, result: Result) -> None:
        """Decide what happens after a StateChange POST (C-WP-2)."""
        now = self._clock.seconds()
        outcome = result.outcome
        if outcome is Outcome.GONE:
            self._destroy(sub, "gone (HTTP 404/410)")
            return
        if result.retry_after is not None:
            sub.not_before = max(sub.not_before, now + result.retry_after)
        if outcome is Outcome.DELIVERED:
            sub.attempts = 0
            sub.failing_since = None
            sub.next_attempt = None
            sub.dropped = 0
            sub.backoff_until = None
            if sub.owed:
                self._want_send(sub, now)
            self._persist_later(sub)
            return
        if sub.failing_since is None:
            sub.failing_since = now
        if now - sub.failing_since >= self._config.failing_give_up:
            self._destroy(sub, "failing for too long")
            return
        if outcome is Outcome.RATE_LIMITED:
            sub.attempts = max(0, sub.attempts - 1)  # a 429 is not a failed attempt
            delay = result.retry_after if result.retry_after is not None \
                else DEFAULT_RATE_LIMIT_DELAY
            sub.not_before = max(sub.not_before, now + delay)
            self._reschedule(sub, sub.not_before)
        elif outcome is Outcome.REJECTED:
            self._drop(sub, "rejected")
        elif sub.attempts >= self._config.push_attempts_max:
            self._drop(sub, "attempts")
        else:
            self._reschedule(sub, max(now + self._config.push_attempt_interval_s, sub.not_before))
        self._persist_later(sub)

    def _reschedule(self, sub: SubState, when: float) -> None:
        sub.next_attempt = when
        self._schedule.add(sub)

    def _drop(self, sub: SubState, reason: str) -> None:
        """Give up this notification, never silently; the owed state stays for the next one."""
        self._metrics.push_dropped.labels(reason).inc()
        self.log.warn(
            "subscription {sub_id}: StateChange dropped ({reason}) after {attempts} attempt(s); "
            "the next one will carry every change since the last delivery",
            sub_id=sub.id, reason=reason, attempts=sub.attempts)
        sub.attempts = 0
        sub.next_attempt = None
        self._schedule.discard(sub)
        if reason == "attempts":
            self._back_off(sub)

    def _back_off(self, sub: SubState) -> None:
        """Space the notifications of a subscription that keeps failing (Synapse-style):
        the next may not start before a delay that doubles per notification dropped in
        a row, from ``push-attempt-interval`` up to ``push-backoff-max``, jittered."""
        sub.dropped += 1
        delay = backoff_delay(sub.dropped, self._config.push_attempt_interval_s,
                              self._config.push_backoff_max_s, self._jitter)
        if delay <= 0:
            return
        sub.backoff_until = self._clock.seconds() + delay
        sub.not_before = max(sub.not_before, sub.backoff_until)
        self.log.info("subscription {sub_id}: {dropped} notification(s) dropped in a row; "
                      "the next waits {delay} s", sub_id=sub.id, dropped=sub.dropped,
                      delay=round(delay, 3))

    async def _verify(self, sub: SubState, body: bytes) -> None:
        """The one PushVerification: no retry on any outcome (C-PS-9, VAPID-14)."""
        result = await self._attempts.verification(sub, body)
        if result is None or sub.gone or self._stopping:
            return
        if result.outcome is Outcome.GONE:
            self._destroy(sub, "gone (HTTP 404/410) at verification")

    # -- destroying and persisting --

    def _destroy(self, sub: SubState, reason: str) -> None:
        self.log.info("subscription {sub_id} destroyed: {reason}", sub_id=sub.id, reason=reason)
        self._remove(sub)
        self._write(self._delete(sub.id))

    def _remove(self, sub: SubState) -> None:
        self._listeners.discard(sub)
        request, sub.request = sub.request, None
        sub.erase()
        self._subs.pop(sub.id, None)
        self._schedule.discard(sub)
        if request is not None:
            request.cancel()

    def _persist_later(self, sub: SubState) -> None:
        self._write(self._persist(sub))

    def _write(self, work: Coroutine[defer.Deferred[object], object, object]) -> None:
        """Run a store write nobody waits for; ``stop`` waits for it, so none outlives it."""
        d = defer.ensureDeferred(work)
        self._writes.add(d)
        d.addErrback(self._log_failure)
        d.addBoth(lambda _: self._writes.discard(d))

    async def _delete(self, sub_id: str) -> None:
        await self._store.delete_push_subscription(sub_id)

    async def _persist(self, sub: SubState) -> bool:
        """Record the delivery state; False if a POST must not follow (not this node's,
        or its lease could not be checked)."""
        if sub.gone:
            return False
        sub.dirty = False
        try:
            saved = await self._ownership.save(sub.id, sub.snapshot())
        except defer.CancelledError:
            sub.dirty = True  # stopping: stop() records it again
            return False
        except Exception:
            sub.dirty = True
            self.log.failure("could not record the delivery state of {sub_id}", sub_id=sub.id)
            return True  # one daemon: the POST goes out; a crash costs one extra attempt
        if saved is Saved.NOT_HELD:
            self._ownership.lost(sub.id)
            return False
        if saved is Saved.GONE:  # destroyed meanwhile (another node, a key rotation)
            if self._subs.get(sub.id) is sub:
                self.log.info("subscription {sub_id} was destroyed elsewhere", sub_id=sub.id)
                self._remove(sub)
            return False
        if saved is Saved.UNSURE:
            sub.dirty = True
            return False
        return True

    def _log_failure(self, failure: Any) -> None:
        if not failure.check(defer.CancelledError):
            self.log.failure("push delivery error", failure)
