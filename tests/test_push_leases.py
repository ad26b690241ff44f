"""The lease keeper and the delivery service in cluster mode, on a Clock (issue 13).

The lease table is a fake that answers renewals as the test says and fences saves by
bucket holder; the delivery service is the real one (tests/push_fakes.py). What is
checked: only held buckets are delivered; takeover resumes from the stored state with
the attempt budget carried over; a lost lease stops delivery at once and a fenced save
refused means no POST; excess buckets drain before they are handed back; notified
changes reach the owner; renewal timing (lease/3, woken at another node's expiry, one
timer); an outage drops the buckets once the lease has run out; shutdown hands back.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from jmappushd.store.pgleases import BUCKETS, Fenced, Renewal, bucket_of
from jmappushd.store.records import PushDelivery, PushSubscription, StoreUnavailable
from jmappushd.transports.webpush.delivery import DeliveryService
from jmappushd.transports.webpush.leases import LeaseKeeper
from tests.push_fakes import Harness, PushStore

LEASE = 30.0
MARGIN = 10.0
NODE = "n1"


def ids_in(bucket: int, count: int = 1, prefix: str = "S") -> list[str]:
    """Subscription ids that hash into ``bucket``."""
    found: list[str] = []
    i = 0
    while len(found) < count:
        if bucket_of(f"{prefix}{i}") == bucket:
            found.append(f"{prefix}{i}")
        i += 1
    return found


class FakeLeases:
    """The lease calls of the PostgreSQL store over the harness's memory store."""

    def __init__(self, store: PushStore) -> None:
        self.store = store
        self.grant: frozenset[int] = frozenset()  # what the next renewals hold
        self.excess: frozenset[int] = frozenset()
        self.next_expiry: float | None = None
        self.failing = False
        self.fence_open: set[int] = set()  # buckets whose fenced saves succeed
        self.renewals = 0
        self.released: list[frozenset[int]] = []
        self.left = False
        self.fenced: list[tuple[str, PushDelivery]] = []
        self.pending_release: Deferred[int] | None = None

    def renew_leases(self, node: str, lease_time: float) -> Deferred[Renewal]:
        self.renewals += 1
        if self.failing:
            return defer.fail(StoreUnavailable("db: connection refused"))
        self.fence_open = set(self.grant)
        return defer.succeed(Renewal(self.grant, self.excess, 2, self.next_expiry))

    def release_leases(self, node: str, buckets: Collection[int]) -> Deferred[int]:
        self.released.append(frozenset(buckets))
        self.fence_open -= set(buckets)
        return defer.succeed(len(buckets))

    def leave_cluster(self, node: str) -> Deferred[None]:
        self.left = True
        self.fence_open.clear()
        return defer.succeed(None)

    def push_subscriptions_in(self, buckets: Collection[int]
                              ) -> Deferred[list[PushSubscription]]:
        return defer.succeed([s for s in self.store.subs.values() if bucket_of(s.id) in buckets])

    def get_push_subscription(self, sub_id: str) -> Deferred[PushSubscription | None]:
        return defer.succeed(self.store.subs.get(sub_id))

    def save_push_delivery_fenced(self, node: str, sub_id: str, delivery: PushDelivery,
                                  margin: float) -> Deferred[Fenced]:
        if bucket_of(sub_id) not in self.fence_open:
            return defer.succeed(Fenced(False, False))
        self.fenced.append((sub_id, delivery))
        d = self.store.save_push_delivery(sub_id, delivery)
        return d.addCallback(lambda saved: Fenced(saved, True))


class Cluster:
    """A harness whose delivery service asks a lease keeper."""

    def __init__(self, **config: object) -> None:
        self.h = h = Harness(push_throttle=0, **config)  # type: ignore[arg-type]
        self.leases = FakeLeases(h.store)
        self.keeper = LeaseKeeper(self.leases, h.clock, NODE, LEASE, MARGIN)
        h.delivery = DeliveryService(h.store, h.hub, h.clock, h.config, h.sender, h.metrics,
                                     ownership=self.keeper)

    def start(self, grant: Iterable[int]) -> None:
        self.leases.grant = frozenset(grant)
        self.h.start()
        self.keeper.start(self.h.delivery)
        self.h.clock.advance(0)

    def renew(self, grant: Iterable[int] | None = None) -> None:
        """Let the renewal timer fire (with a new answer if given)."""
        if grant is not None:
            self.leases.grant = frozenset(grant)
        self.h.clock.advance(LEASE / 3)


def renewal_timers(c: Cluster) -> list[IDelayedCall]:
    return [t for t in c.h.clock.getDelayedCalls()
            if getattr(t, "func", None) == c.keeper._tick]


def test_only_held_buckets_are_delivered() -> None:
    """A subscription whose bucket another node holds gets no POST from this node; one in
    a held bucket is loaded at the first renewal and delivered."""
    c = Cluster()
    mine, theirs = ids_in(1)[0], ids_in(2)[0]
    c.h.record(mine)
    c.h.record(theirs)
    c.start({1})
    assert c.h.delivery.tracked() == [mine]
    c.h.publish({"A": {"Email": "s1"}})
    call = c.h.transport.pop()
    assert call.url.endswith("/" + mine) and c.h.transport.calls == []
    assert c.leases.fenced[-1][0] == mine  # recorded through the fence before the POST
    call.answer(201)


def test_takeover_resumes_the_stored_retry_and_counts_the_budget_across_nodes() -> None:
    """The last owner recorded attempt 2 of 3, due later, with s1 owed and seq 1 covered;
    s2 was published after. The new owner sends s2 (the merged newest) when the retry is
    due, not before; that attempt failing is the third and last: dropped, not retried."""
    c = Cluster(push_attempts_max=3)
    [sub_id] = ids_in(7)
    record = c.h.record(sub_id)
    c.h.publish({"A": {"Email": "s1"}})
    c.h.publish({"A": {"Email": "s2"}})
    due = c.h.clock.seconds() + 5
    stored = PushDelivery({"A": {"Email": "s1"}}, 2, due, c.h.clock.seconds() - 60, 1, 0, None)
    defer.ensureDeferred(c.h.store.save_push_delivery(record.id, stored))
    c.start({7})
    assert c.h.transport.calls == []  # not before the stored due time
    c.h.tick_until(5)
    call = c.h.transport.pop()
    assert c.h.decrypt(call) == {"@type": "StateChange", "changed": {"A": {"Email": "s2"}}}
    assert c.leases.fenced[-1][1].attempts == 3
    call.answer(500)
    c.h.tick_until(60)
    assert c.h.transport.calls == []
    assert c.h.metric("jmappushd_push_dropped_total", reason="attempts") == 1


def test_a_lease_lost_at_renewal_stops_delivery_at_once() -> None:
    """The renewal no longer holds the bucket (it expired before renewal): the POST in
    flight is cancelled, the subscription forgotten here, later changes not sent."""
    c = Cluster()
    [sub_id] = ids_in(3)
    c.h.record(sub_id)
    c.start({3})
    c.h.publish({"A": {"Email": "s1"}})
    call = c.h.transport.pop()
    c.renew(grant=set())
    assert call.d.called  # cancelled
    assert c.h.delivery.tracked() == []
    c.h.publish({"A": {"Email": "s2"}})
    c.h.tick_until(30)
    assert c.h.transport.calls == []


def test_a_refused_fence_means_no_post_and_a_quick_renewal() -> None:
    """The database says another node holds the bucket now: nothing is POSTed, no
    attempt is counted, the subscription is released and a renewal runs at once."""
    c = Cluster()
    [sub_id] = ids_in(4)
    c.h.record(sub_id)
    c.start({4})
    renewals = c.leases.renewals
    c.leases.fence_open.clear()
    c.leases.grant = frozenset()
    c.h.publish({"A": {"Email": "s1"}})
    assert c.h.transport.calls == []
    c.h.clock.advance(0)
    assert c.leases.renewals == renewals + 1
    assert c.h.delivery.tracked() == []
    assert [s for s, _ in c.h.store.saved if s == sub_id] == []  # nothing recorded either


def test_excess_buckets_drain_before_they_are_handed_back() -> None:
    """A node joined: the renewal reports bucket 5 as excess. The POST in flight
    finishes and its success is recorded (through the fence) before the lease is
    released; a change arriving meanwhile is not sent from here."""
    c = Cluster()
    [sub_id] = ids_in(5)
    c.h.record(sub_id)
    c.start({5, 6})
    c.h.publish({"A": {"Email": "s1"}})
    call = c.h.transport.pop()
    c.leases.excess = frozenset({5})
    c.renew()
    assert c.leases.released == []  # still draining
    c.h.publish({"A": {"Email": "s2"}})
    assert c.h.transport.calls == []
    call.answer(201)
    assert c.leases.released == [frozenset({5})]
    saved = c.h.store.last_saved(sub_id)
    assert saved.attempts == 0 and saved.pending == {}  # s1 delivered, recorded
    assert c.h.delivery.tracked() == []
    assert 5 not in c.keeper.held and 6 in c.keeper.held


def test_notified_changes_reach_the_owner() -> None:
    """Created on another node: tracked once notified (and its verification timeout runs
    here); verified elsewhere: activated; deleted elsewhere: forgotten. Notices for
    buckets held elsewhere are ignored."""
    c = Cluster(push_verify_timeout=60_000)
    c.start({9})
    [sub_id] = ids_in(9)
    [other] = ids_in(10)
    c.h.record(sub_id, verified=False)
    c.h.record(other, verified=False)
    c.keeper.touched(sub_id)
    c.keeper.touched(other)
    assert c.h.delivery.tracked() == [sub_id]
    assert c.h.transport.calls == []  # the creating node sent the verification
    record = c.h.store.subs[sub_id]
    defer.ensureDeferred(c.h.store.update_push_subscription(sub_id, {"verified": True}))
    c.keeper.touched(sub_id)
    c.h.publish({"A": {"Email": "s1"}})
    c.h.transport.pop().answer(201)
    defer.ensureDeferred(c.h.store.delete_push_subscription(record.id))
    c.keeper.touched(sub_id)
    assert c.h.delivery.tracked() == []


def test_unverified_timeout_runs_on_the_owner_only() -> None:
    """C-PS-8 in a cluster: the owner destroys a subscription not verified in time."""
    c = Cluster(push_verify_timeout=60_000)
    c.start({11})
    [sub_id] = ids_in(11)
    c.h.record(sub_id, verified=False)
    c.keeper.touched(sub_id)
    c.h.tick_until(61)
    assert sub_id in c.h.store.deleted


def test_renewal_timing_one_timer_and_waking_at_another_nodes_expiry() -> None:
    """Renewals every lease/3 on one timer; when another node's lease expires sooner,
    the keeper wakes just after it to take the buckets over."""
    c = Cluster()
    c.start({1})
    timers = renewal_timers(c)
    assert len(timers) == 1
    assert timers[0].getTime() - c.h.clock.seconds() == LEASE / 3
    c.leases.next_expiry = 2.0
    c.renew()
    [timer] = renewal_timers(c)
    assert abs(timer.getTime() - c.h.clock.seconds() - 2.05) < 1e-9


def test_an_outage_keeps_delivering_until_the_lease_runs_out_then_drops() -> None:
    """Renewals fail: within the lease this node still owns its buckets; once it has run
    out (by this node's clock) they are dropped, warned once; when the database is back
    the next renewal takes them again and delivery resumes."""
    c = Cluster()
    [sub_id] = ids_in(12)
    c.h.record(sub_id)
    c.start({12})
    c.leases.failing = True
    c.h.clock.advance(LEASE / 3)
    assert c.h.delivery.tracked() == [sub_id]
    for _ in range(40):
        c.h.clock.advance(1)
    assert c.h.delivery.tracked() == []
    c.leases.failing = False
    for _ in range(12):
        c.h.clock.advance(1)
    assert c.h.delivery.tracked() == [sub_id]
    c.h.publish({"A": {"Email": "s1"}})
    assert c.h.transport.pop().url.endswith(sub_id)


def test_stop_records_what_is_owed_then_hands_every_bucket_back() -> None:
    c = Cluster()
    [sub_id] = ids_in(13)
    c.h.record(sub_id)
    c.start({13})
    c.h.publish({"A": {"Email": "s1"}})
    c.h.transport.pop()
    c.keeper.begin_stop()
    done = defer.ensureDeferred(c.h.delivery.stop())
    assert done.called
    stopped = defer.ensureDeferred(c.keeper.stop())
    assert stopped.called and c.leases.left
    assert c.h.store.last_saved(sub_id).pending == {"A": {"Email": "s1"}}
    assert renewal_timers(c) == []


def test_ids_spread_over_every_bucket() -> None:
    assert {bucket_of(f"x{i}") for i in range(4000)} == set(range(BUCKETS))


def test_a_row_destroyed_unnoticed_gets_no_post() -> None:
    """The row went (a key rotation on another node, its notice lost): the fenced record
    finds nothing to update, so nothing is POSTed and the subscription is forgotten."""
    c = Cluster()
    [sub_id] = ids_in(14)
    c.h.record(sub_id)
    c.start({14})
    defer.ensureDeferred(c.h.store.delete_push_subscription(sub_id))
    c.h.publish({"A": {"Email": "s1"}})
    assert c.h.transport.calls == []
    assert c.h.delivery.tracked() == []
