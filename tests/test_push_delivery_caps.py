"""POSTs in flight are capped: max-in-flight overall, max-in-flight-per-origin (DESIGN:
bounded everything; issue 10, defect 1).

Every test runs on a Clock with the fake transport: a POST is in flight until the test
answers its recorded Deferred.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, globalLogPublisher

from jmappushd.store.records import PushSubscription
from jmappushd.transports.webpush.attempt import Attempts
from jmappushd.transports.webpush.slots import SlotLimiter
from jmappushd.transports.webpush.state import SubState
from tests.push_fakes import Harness
from tests.store_backends import fired
from tests.support import log_into


def many(h: Harness, count: int, origins: int, *, accounts: bool = False
         ) -> list[PushSubscription]:
    """``count`` verified subscriptions spread over ``origins`` push services; with
    ``accounts`` each has an account of its own (so publishes can target one)."""
    records = [
        h.record(f"S{i:03d}", url=f"https://push{i % origins}.example/S{i:03d}",
                 user=f"u{i:03d}" if accounts else "u1",
                 accounts=(f"A{i:03d}",) if accounts else ("A",))
        for i in range(count)
    ]
    h.start(*records)
    return records


def test_one_publish_to_500_subscriptions_starts_256_posts() -> None:
    """Defect 1: 500 subscriptions on many push services and one publish start exactly
    max-in-flight (256) POSTs; answering them lets the rest through, each once."""
    h = Harness(push_throttle=0)
    many(h, 500, origins=50)
    h.publish({"A": {"Email": "s1"}})
    assert len(h.transport.calls) == 256
    seen = set()
    while h.transport.calls:
        call = h.transport.pop()
        assert call.url not in seen
        seen.add(call.url)
        call.answer(201)
        assert len(h.transport.calls) <= 256
    assert len(seen) == 500
    assert h.metric("jmappushd_push_deliveries_total", kind="state", outcome="delivered") == 500


def test_one_origin_gets_at_most_32() -> None:
    """Defect 1: with every subscription on one push service only
    max-in-flight-per-origin (32) POSTs are in flight."""
    h = Harness(push_throttle=0)
    many(h, 500, origins=1)
    h.publish({"A": {"Email": "s1"}})
    assert len(h.transport.calls) == 32
    h.transport.pop().answer(201)
    assert len(h.transport.calls) == 32


def test_configured_caps_are_used() -> None:
    """The caps come from [push] max-in-flight and max-in-flight-per-origin."""
    h = Harness(push_throttle=0, max_in_flight=5, max_in_flight_per_origin=2)
    many(h, 20, origins=10)
    h.publish({"A": {"Email": "s1"}})
    assert len(h.transport.calls) == 5
    assert all(sum(c.url.startswith(f"https://push{o}.") for c in h.transport.calls) <= 2
               for o in range(10))


def test_a_completed_post_starts_the_next_waiter_in_order() -> None:
    """Waiters get freed slots first come, first served, whatever the answer was."""
    h = Harness(push_throttle=0, max_in_flight_per_origin=2)
    many(h, 6, origins=1, accounts=True)
    for i in range(6):
        h.publish({f"A{i:03d}": {"Email": "s1"}})
    assert [c.url[-4:] for c in h.transport.calls] == ["S000", "S001"]
    h.transport.pop().answer(201)
    assert h.transport.calls[-1].url.endswith("S002")
    h.transport.pop().answer(500)  # a failure frees its slot too
    assert h.transport.calls[-1].url.endswith("S003")
    h.transport.pop().d.errback(defer.TimeoutError())  # so does a timeout
    assert h.transport.calls[-1].url.endswith("S004")
    h.transport.pop().d.errback(RuntimeError("boom"))  # and any error
    assert [c.url[-4:] for c in h.transport.calls] == ["S004", "S005"]


def test_a_waiting_subscription_is_queued_once_and_sends_the_newest_states() -> None:
    """Changes arriving while a subscription waits for a slot merge into its owed state:
    one POST, with the newest state of every type."""
    h = Harness(push_throttle=0, max_in_flight_per_origin=1)
    many(h, 2, origins=1, accounts=True)
    h.publish({"A000": {"Email": "s1"}})
    h.publish({"A001": {"Email": "s1"}})
    h.publish({"A001": {"Email": "s2", "Mailbox": "m1"}})
    assert len(h.transport.calls) == 1
    h.transport.pop().answer(201)
    call = h.transport.pop()
    assert call.url.endswith("S001")
    assert h.decrypt(call)["changed"] == {"A001": {"Email": "s2", "Mailbox": "m1"}}
    call.answer(201)
    assert h.transport.calls == []


def test_destroyed_waiter_frees_nothing_it_did_not_hold() -> None:
    """A subscription destroyed while waiting leaves the queue: the caps stay exact and
    the next waiter goes when a real slot frees."""
    h = Harness(push_throttle=0, max_in_flight_per_origin=1)
    many(h, 3, origins=1, accounts=True)
    for i in range(3):
        h.publish({f"A{i:03d}": {"Email": "s1"}})
    h.delivery.forget("S001")
    assert len(h.transport.calls) == 1  # the destroyed waiter did not free a slot
    h.transport.pop().answer(201)
    assert [c.url[-4:] for c in h.transport.calls] == ["S002"]


def test_destroyed_in_flight_frees_its_slot() -> None:
    """A subscription destroyed with its POST in flight gives its slot back."""
    h = Harness(push_throttle=0, max_in_flight_per_origin=1)
    many(h, 2, origins=1, accounts=True)
    h.publish({"A000": {"Email": "s1"}})
    h.publish({"A001": {"Email": "s1"}})
    h.delivery.forget("S000")
    assert h.transport.calls[0].d.called  # cancelled
    assert h.transport.calls[-1].url.endswith("S001")


def test_verification_counts_against_the_caps() -> None:
    """A PushVerification POST takes a slot: it waits behind StateChanges to the same
    push service, and holds one while in flight."""
    h = Harness(push_throttle=0, max_in_flight_per_origin=1)
    many(h, 1, origins=1)
    h.publish({"A": {"Email": "s1"}})
    record = h.record("NEW", verified=False, url="https://push0.example/NEW")
    h.delivery.created(record)
    assert len(h.transport.calls) == 1
    h.transport.pop().answer(201)
    verification = h.transport.pop()
    assert h.decrypt(verification)["@type"] == "PushVerification"
    h.publish({"A": {"Email": "s2"}})
    assert h.transport.calls == []  # the verification holds the one slot
    verification.answer(201)
    assert h.transport.pop().url.endswith("S000")


def test_stop_cancels_waiters_and_leaves_no_timers() -> None:
    """Shutdown cancels POSTs in flight and those waiting for a slot; what they owed is
    recorded and nothing is left on the clock."""
    h = Harness(push_throttle=0, max_in_flight_per_origin=1)
    many(h, 3, origins=1)
    h.publish({"A": {"Email": "s1"}})
    assert len(h.transport.calls) == 1
    done = defer.ensureDeferred(h.delivery.stop())
    assert done.called
    assert len(h.transport.calls) == 1 and h.transport.calls[0].d.called
    assert h.clock.getDelayedCalls() == []
    for sub_id in ("S000", "S001", "S002"):
        assert h.store.last_saved(sub_id).pending == {"A": {"Email": "s1"}}


class Abandoned:
    """Two StateChange attempts on one push service with one slot: the first POST in
    flight, the second waiting. The test holds both coroutines, so it can close them
    the way the garbage collector finalizes an abandoned service (``coroutine.close``)."""

    def __init__(self) -> None:
        self.h = h = Harness(push_throttle=0)
        many(h, 2, origins=1, accounts=True)
        self.slots = SlotLimiter(total=10, per_origin=1)
        self.saved: list[str] = []
        attempts = Attempts(h.clock, h.config, h.sender, self.slots, h.metrics,
                            self._persist, lambda: False)
        subs = [h.delivery.get(f"S00{i}") for i in range(2)]
        for i, sub in enumerate(subs):
            assert sub is not None
            sub.owed = {f"A00{i}": {"Email": "s1"}}
        self.coros = [attempts.state_change(sub) for sub in subs if sub is not None]
        self.outcomes: list[object] = []
        self.done = [Deferred.fromCoroutine(c).addBoth(self.outcomes.append)
                     for c in self.coros]
        self.logged: list[LogEvent] = []
        assert len(h.transport.calls) == 1 and self.slots.waiting == 1

    async def _persist(self, sub: SubState) -> bool:
        self.saved.append(sub.id)
        return True

    def close(self, *order: int) -> None:
        """Close the coroutines in this order, noting every failure logged meanwhile."""
        observer = log_into(self.logged)
        globalLogPublisher.addObserver(observer)
        try:
            for i in order:
                self.coros[i].close()
        finally:
            globalLogPublisher.removeObserver(observer)


def test_finalizing_the_holder_does_not_resume_a_finalized_waiter() -> None:
    """Issue 10 (gc): the collector closes the waiting coroutine, then the one holding
    the slot. Closing the holder resumes nothing: on the old code its ``finally``
    released the slot, granted it to the closed waiter and Twisted resumed that
    coroutine again ("cannot reuse already awaited coroutine", logged as "push delivery
    error" by the service)."""
    a = Abandoned()
    a.close(1, 0)
    assert a.outcomes == []  # neither attempt reports: both were closed, not resumed
    assert [e for e in a.logged if "log_failure" in e] == []
    assert len(a.h.transport.calls) == 1


def test_finalizing_the_holder_starts_no_post() -> None:
    """Issue 10 (gc): closing the coroutine that holds the slot first does not hand the
    slot to the live waiter, which would start a POST (and a persist) from inside the
    garbage collector."""
    a = Abandoned()
    a.close(0)
    assert len(a.h.transport.calls) == 1 and a.saved == ["S000"]
    assert a.slots.waiting == 1 and a.outcomes == []
    a.close(1)
    assert a.outcomes == [] and a.logged == []


def test_slot_released_on_every_exit_but_finalization() -> None:
    """``with slot`` releases on return, exception and cancellation, so the caps stay
    exact; only GeneratorExit (a coroutine closed, never resumed) keeps it."""
    limiter = SlotLimiter(total=1, per_origin=1)
    for kind in (None, RuntimeError, defer.CancelledError):
        slot = fired(limiter.acquire("https://a.example"))
        try:
            with slot:
                if kind is not None:
                    raise kind()
        except (RuntimeError, defer.CancelledError):
            pass
        assert limiter.in_flight == 0 and not slot.held
    slot = fired(limiter.acquire("https://a.example"))
    try:
        with slot:
            raise GeneratorExit
    except GeneratorExit:
        pass
    assert limiter.in_flight == 1 and slot.held
