"""Cluster mode's push delivery leases: this node delivers the buckets it holds.

Each subscription hashes into one of 256 buckets (:mod:`jmappushd.store.pgleases`);
a bucket's deliveries belong to one live node through a lease row, renewed every
``lease-time / 3`` and taken over by another node once it expires. The keeper runs
that loop (one timer), hands buckets it gains or loses to the delivery service
(:meth:`~.delivery.DeliveryService.acquire` / ``release``) and answers the delivery
service's :class:`~.ownership.Ownership` questions:

* ``owns``: the bucket is held and the last renewal was sent less than
  ``lease-time`` ago (by this node's clock, so the database's view, which counts
  from when the renewal arrived, can only be later);
* ``save``: the fenced record before each POST, which the database refuses unless
  the lease has more than ``push-timeout`` left. A node that lost its lease cannot
  start a POST; a POST that started ends before anyone else can take the bucket.

Buckets above the fair share (a node joined) are drained (POSTs in flight finish and
are recorded) and handed back; at shutdown all of them are handed back at once, so a
rolling restart moves deliveries without waiting for expiry. Subscriptions created,
changed or deleted through another node reach the owner as notifications
(:meth:`touched`); a resync of every held bucket heals missed ones after a LISTEN
reconnect and every few minutes.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Collection, Coroutine
from functools import partial
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from jmappushd.store.pgleases import Fenced, Renewal, bucket_of
from jmappushd.store.records import PushDelivery, PushSubscription
from jmappushd.transports.webpush.ownership import Saved

__all__ = ["Deliveries", "LeaseKeeper", "LeaseStore"]

RETRY_FIRST = 1.0  # s before renewing again after a failed renewal
RESYNC_EVERY = 30  # renewals between two resyncs of every held bucket (5 min by default)
WAKE_AFTER_EXPIRY = 0.05  # s after another node's lease expires before trying to take it


class LeaseStore(Protocol):
    """The PostgreSQL store's lease calls (:class:`~jmappushd.store.postgresql.PostgreSQLStore`)."""

    def renew_leases(self, node: str, lease_time: float) -> Deferred[Renewal]: ...

    def release_leases(self, node: str, buckets: Collection[int]) -> Deferred[int]: ...

    def leave_cluster(self, node: str) -> Deferred[None]: ...

    def push_subscriptions_in(self, buckets: Collection[int]
                              ) -> Deferred[list[PushSubscription]]: ...

    def get_push_subscription(self, sub_id: str) -> Deferred[PushSubscription | None]: ...

    def save_push_delivery_fenced(self, node: str, sub_id: str, delivery: PushDelivery,
                                  margin: float) -> Deferred[Fenced]: ...


class Deliveries(Protocol):
    """What the keeper asks of the delivery service."""

    async def acquire(self, records: list[PushSubscription]) -> None: ...

    async def release(self, owned: Callable[[str], bool], drain: bool) -> list[str]: ...

    async def reload(self, sub_id: str, record: PushSubscription | None) -> None: ...

    def tracked(self) -> list[str]: ...


class LeaseKeeper:
    """Renews this node's bucket leases and routes ownership to the delivery service."""

    log = Logger()

    def __init__(self, store: LeaseStore, clock: IReactorTime, node: str, lease_time: float,
                 margin: float, incarnation: str | None = None) -> None:
        """``margin``: the lease time a POST needs left to start (the push timeout).

        Leases are held by ``node/incarnation``, random per process: two daemons given
        the same node name (or a node restarted before its old leases expired) never
        share a lease, and a paused process that wakes after a takeover is fenced off
        even though its name is the same."""
        self.node = node
        self.owner = f"{node}/{incarnation or secrets.token_hex(4)}"
        self._namesakes_warned = False
        self._store = store
        self._clock = clock
        self._lease_time = lease_time
        self._margin = margin
        self._held: frozenset[int] = frozenset()
        self._draining: frozenset[int] = frozenset()
        self._valid_until = 0.0
        self._live = 0
        self._renewals = 0
        self._delivery: Deliveries | None = None
        self._timer: IDelayedCall | None = None
        self._running = False
        self._outage = False
        self._retry = RETRY_FIRST
        self._lock = defer.DeferredLock()  # renewals, resyncs and reloads one at a time
        self._touched: set[str] = set()
        self._reloading = False
        self._tasks: set[Deferred[None]] = set()

    # -- what the metrics and /health read --

    @property
    def held(self) -> frozenset[int]:
        return self._held

    @property
    def live_nodes(self) -> int:
        return self._live

    def health(self) -> dict[str, object]:
        """What ``/health`` shows of this node in cluster mode."""
        return {"node": self.node, "owner": self.owner, "pushBuckets": len(self._held),
                "draining": len(self._draining), "liveNodes": self._live,
                "leasesRenewed": not self._outage}

    # -- Ownership --

    def owns(self, sub_id: str) -> bool:
        return bucket_of(sub_id) in self._held and self._clock.seconds() < self._valid_until

    def save(self, sub_id: str, delivery: PushDelivery) -> Deferred[Saved]:
        bucket = bucket_of(sub_id)
        if bucket not in self._held and bucket not in self._draining:
            return defer.succeed(Saved.NOT_HELD)
        d = self._store.save_push_delivery_fenced(self.owner, sub_id, delivery, self._margin)

        def answer(fenced: Fenced) -> Saved:
            return Saved.SAVED if fenced.saved else Saved.GONE if fenced.held \
                else Saved.NOT_HELD

        def unsure(failure: Failure) -> Saved | Failure:
            if failure.check(defer.CancelledError):
                return failure
            self.log.warn("subscription {sub_id}: lease not checked ({reason}); the POST "
                          "waits for its next attempt", sub_id=sub_id,
                          reason=_reason(failure))
            return Saved.UNSURE

        return d.addCallbacks(answer, unsure)

    def lost(self, sub_id: str) -> None:
        """A fenced save found the bucket gone: stop delivering it and renew soon."""
        bucket = bucket_of(sub_id)
        if bucket not in self._held:
            return
        self.log.warn("lease on bucket {bucket} lost (found at a delivery); another node "
                      "delivers it", bucket=bucket)
        self._held = self._held - {bucket}
        self._spawn(self._locked(lambda: self._let_go(drain=False)))
        self._schedule(0.0)

    # -- lifecycle --

    def start(self, delivery: Deliveries) -> None:
        """Begin renewing: the first renewal takes this node's share of free buckets."""
        self._delivery = delivery
        self._running = True
        self._schedule(0.0)

    def begin_stop(self) -> None:
        """No more renewals or takeovers (delivery then stops and records what is owed)."""
        self._running = False
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    async def stop(self) -> None:
        """After the delivery service stopped: hand every bucket back at once."""
        self.begin_stop()
        while self._tasks:
            await defer.DeferredList(list(self._tasks), consumeErrors=True)
        await self._lock.acquire()
        try:
            if self._held or self._draining:
                await self._store.leave_cluster(self.owner)
                self.log.info("handed {count} push buckets back", count=len(self._held))
        except Exception as exc:
            self.log.warn("could not hand the push buckets back ({reason}); other nodes "
                          "take them when the leases expire", reason=_reason(Failure(exc)))
        finally:
            self._held = self._draining = frozenset()
            self._lock.release()

    # -- notifications from the LISTEN connection --

    def touched(self, sub_id: str) -> None:
        """A subscription was created, changed or deleted (possibly by another node)."""
        if not self._running or bucket_of(sub_id) not in self._held:
            return
        self._touched.add(sub_id)
        if not self._reloading:
            self._reloading = True
            self._spawn(self._reload_touched())

    def reconnected(self) -> None:
        """Notifications sent while not listening are gone: resync every held bucket."""
        if self._running and self._held:
            self._spawn(self._locked(self._resync))

    # -- the renewal loop --

    def _schedule(self, delay: float) -> None:
        if not self._running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self._clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._spawn(self._locked(self._renew))

    async def _renew(self) -> None:
        if not self._running:
            return
        sent = self._clock.seconds()
        try:
            renewal = await self._store.renew_leases(self.owner, self._lease_time)
        except Exception as exc:
            await self._renewal_failed(_reason(Failure(exc)))
            return
        if not self._running:
            return
        if renewal.namesakes and not self._namesakes_warned:
            self._namesakes_warned = True
            self.log.warn("{count} other live daemon(s) use the node name {node}: give each "
                          "node its own [cluster] node-name (deliveries stay correct; the "
                          "logs and /health cannot tell them apart)",
                          count=renewal.namesakes, node=self.node)
        if self._outage:
            self._outage = False
            self.log.info("push leases renewed again ({count} buckets)", count=len(renewal.held))
        self._retry = RETRY_FIRST
        self._valid_until = sent + self._lease_time
        self._live = renewal.live_nodes
        self._renewals += 1
        held = renewal.held - self._draining
        lost, gained = self._held - held, held - self._held
        self._held = held
        if lost:
            self.log.warn("leases on {count} push buckets expired before renewal; other "
                          "nodes deliver them", count=len(lost))
            await self._let_go(drain=False)
        if gained:
            await self._take(gained)
        excess = renewal.excess - self._draining
        if excess and not self._draining:
            self._held = self._held - excess
            self._draining = excess
            self._spawn(self._hand_back(excess))
        elif self._renewals % RESYNC_EVERY == 0:
            await self._resync()
        delay = self._lease_time / 3
        if renewal.next_expiry is not None:
            delay = min(delay, renewal.next_expiry + WAKE_AFTER_EXPIRY)
        self._schedule(delay)

    async def _renewal_failed(self, reason: str) -> None:
        if not self._outage:
            self._outage = True
            self.log.warn("renewing the push leases of {node} failed ({reason}); retrying",
                          node=self.node, reason=reason)
        if self._held and self._clock.seconds() >= self._valid_until:
            self.log.warn("push leases of {node} expired during the outage; its {count} "
                          "buckets are free for any node", node=self.node,
                          count=len(self._held))
            self._held = frozenset()
            await self._let_go(drain=False)
        self._schedule(min(self._retry, self._lease_time / 3))
        self._retry = min(self._retry * 2, self._lease_time / 3)

    async def _take(self, gained: frozenset[int]) -> None:
        assert self._delivery is not None
        try:
            records = await self._store.push_subscriptions_in(gained)
        except Exception as exc:
            # Not loaded, so not delivered: give them back for this or another node.
            self.log.warn("loading {count} push buckets failed ({reason}); handing them "
                          "back", count=len(gained), reason=_reason(Failure(exc)))
            self._held = self._held - gained
            try:
                await self._store.release_leases(self.owner, gained)
            except Exception:
                self.log.debug("releasing them failed too: they expire by themselves")
            return
        await self._delivery.acquire(records)
        self.log.info("took {count} push buckets ({subs} subscriptions); {held} held, "
                      "{live} live nodes", count=len(gained), subs=len(records),
                      held=len(self._held), live=self._live)

    async def _let_go(self, drain: bool) -> None:
        if self._delivery is not None:
            await self._delivery.release(self.owns, drain)

    async def _hand_back(self, excess: frozenset[int]) -> None:
        """Drain the buckets above the fair share, then release their leases."""
        try:
            if self._delivery is not None:
                await self._delivery.release(lambda sub_id: bucket_of(sub_id) not in excess,
                                             drain=True)
            await self._store.release_leases(self.owner, excess)
            self.log.info("handed {count} push buckets back (fair share of {live} nodes)",
                          count=len(excess), live=self._live)
        except Exception as exc:
            self.log.warn("handing push buckets back failed ({reason}); they expire by "
                          "themselves", reason=_reason(Failure(exc)))
        finally:
            self._draining = frozenset()

    async def _resync(self) -> None:
        """Reload every held bucket: track what is missing, forget what was deleted."""
        if self._delivery is None or not self._held:
            return
        held = self._held
        try:
            records = await self._store.push_subscriptions_in(held)
        except Exception as exc:
            self.log.warn("resyncing the push buckets failed ({reason})",
                          reason=_reason(Failure(exc)))
            return
        found = {record.id: record for record in records}
        for sub_id in self._delivery.tracked():
            if bucket_of(sub_id) in held and sub_id not in found:
                await self._delivery.reload(sub_id, None)
        for record in records:
            if bucket_of(record.id) in self._held:
                await self._delivery.reload(record.id, record)

    async def _reload_touched(self) -> None:
        try:
            while self._touched and self._running:
                sub_id = self._touched.pop()
                try:
                    record = await self._store.get_push_subscription(sub_id)
                except Exception as exc:
                    self.log.warn("reloading subscription {sub_id} failed ({reason}); the "
                                  "next resync picks it up", sub_id=sub_id,
                                  reason=_reason(Failure(exc)))
                    continue
                if self._delivery is not None and bucket_of(sub_id) in self._held:
                    await self._locked(partial(self._delivery.reload, sub_id, record))
        finally:
            self._reloading = False

    # -- plumbing --

    async def _locked(self, work: Callable[[], Awaitable[None]]) -> None:
        await self._lock.acquire()
        try:
            await work()
        finally:
            self._lock.release()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        d = defer.ensureDeferred(work)
        self._tasks.add(d)
        d.addErrback(lambda f: self.log.failure("push lease work failed", f))
        d.addBoth(lambda _: self._tasks.discard(d))


def _reason(failure: Failure) -> str:
    return " ".join(failure.getErrorMessage().split())[:300] or repr(failure.value)[:300]
