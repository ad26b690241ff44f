"""The two-level limiter of Web Push POSTs in flight, alone (DESIGN: bounded outbound work).

No clock is needed: a slot is granted at once or when another is released, synchronously.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred

from jmappushd.transports.webpush.slots import Slot, SlotLimiter, slot_key
from jmappushd.transports.webpush.vapid import OriginCache, origin_of
from tests.test_push_vapid import ORIGINS


def granted(d: Deferred[Slot]) -> Slot:
    """The slot ``d`` fired with; fails the test if it is still waiting."""
    box: list[Slot] = []
    d.addCallback(box.append)
    assert box, "the slot was not granted"
    return box[0]


def test_grants_up_to_the_total_then_queues() -> None:
    """At most ``total`` slots are held at once; the next request waits."""
    limiter = SlotLimiter(total=3, per_origin=10)
    slots = [granted(limiter.acquire(f"https://p{i}.example")) for i in range(3)]
    waiting = limiter.acquire("https://p9.example")
    assert not waiting.called
    assert limiter.in_flight == 3 and limiter.waiting == 1
    slots[0].release()
    assert granted(waiting).origin == "https://p9.example"
    assert limiter.in_flight == 3 and limiter.waiting == 0


def test_per_origin_cap_and_other_origins_pass() -> None:
    """A saturated origin waits; a request for an origin with room is not held behind it."""
    limiter = SlotLimiter(total=10, per_origin=2)
    a = [granted(limiter.acquire("https://a.example")) for _ in range(2)]
    blocked = limiter.acquire("https://a.example")
    assert not blocked.called
    other = granted(limiter.acquire("https://b.example"))
    assert limiter.in_flight_to("https://a.example") == 2 and other.held
    a[1].release()
    assert granted(blocked).origin == "https://a.example"
    assert limiter.in_flight_to("https://a.example") == 2


def test_waiters_are_served_in_arrival_order_across_origins() -> None:
    """When the total frees up, the oldest waiter whose origin has room goes first."""
    limiter = SlotLimiter(total=2, per_origin=2)
    held = [granted(limiter.acquire("https://x.example")) for _ in range(2)]
    order: list[str] = []

    def record(slot: Slot, name: str) -> Slot:
        order.append(name)
        return slot

    for name in ("a1", "b1", "a2", "c1", "b2"):
        origin = f"https://{name[0]}.example"
        limiter.acquire(origin).addCallback(record, name)
    held[0].release()
    held[1].release()
    assert order == ["a1", "b1"]
    assert limiter.waiting == 3


def test_fifo_within_one_origin() -> None:
    """One origin's waiters get its slots in the order they asked."""
    limiter = SlotLimiter(total=100, per_origin=1)
    first = granted(limiter.acquire("https://a.example"))
    order: list[int] = []
    slots: list[Slot] = []

    def got(slot: Slot, i: int) -> None:
        order.append(i)
        slots.append(slot)

    for i in range(5):
        limiter.acquire("https://a.example").addCallback(got, i)
    first.release()
    for _ in range(4):
        slots[-1].release()
    assert order == [0, 1, 2, 3, 4]


def test_cancelled_waiter_holds_and_releases_nothing() -> None:
    """Cancelling a waiting request fails it with CancelledError, frees no slot it never
    held, and the next waiter takes its place."""
    limiter = SlotLimiter(total=1, per_origin=1)
    held = granted(limiter.acquire("https://a.example"))
    gone = limiter.acquire("https://a.example")
    nxt = limiter.acquire("https://a.example")
    gone.cancel()
    failures: list[object] = []
    gone.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)  # type: ignore[attr-defined]
    assert limiter.in_flight == 1 and limiter.waiting == 1
    held.release()
    assert granted(nxt).held and limiter.in_flight == 1


def test_release_is_idempotent() -> None:
    """Releasing a slot twice frees it once: a second release cannot steal another's."""
    limiter = SlotLimiter(total=1, per_origin=1)
    slot = granted(limiter.acquire("https://a.example"))
    slot.release()
    other = granted(limiter.acquire("https://a.example"))
    slot.release()
    assert limiter.in_flight == 1 and other.held
    assert not limiter.acquire("https://a.example").called


def test_a_newcomer_does_not_jump_the_queue() -> None:
    """While others wait for an origin, a new request for it queues behind them even if a
    slot was just freed and handed on."""
    limiter = SlotLimiter(total=1, per_origin=1)
    held = granted(limiter.acquire("https://a.example"))
    first = limiter.acquire("https://a.example")
    held.release()
    late = limiter.acquire("https://a.example")
    assert first.called and not late.called


def test_synchronous_release_chains_do_not_recurse() -> None:
    """Waiters that release their slot as soon as they get it (a POST failing at once)
    are served by a loop: thousands of them do not overflow the stack."""
    limiter = SlotLimiter(total=1, per_origin=1)
    held = granted(limiter.acquire("https://a.example"))
    served: list[int] = []

    def serve(slot: Slot, i: int) -> None:
        served.append(i)
        slot.release()

    for i in range(5000):
        limiter.acquire("https://a.example").addCallback(serve, i)
    held.release()
    assert len(served) == 5000 and served[:3] == [0, 1, 2]
    assert limiter.in_flight == 0 and limiter.waiting == 0


def test_request_made_while_granting_keeps_its_place() -> None:
    """A waiter's continuation that asks for another slot queues behind those already
    waiting (no jump while the limiter is handing slots out)."""
    limiter = SlotLimiter(total=1, per_origin=1)
    held = granted(limiter.acquire("https://a.example"))
    order: list[str] = []
    slots: list[Slot] = []

    def keep(slot: Slot, name: str) -> None:
        order.append(name)
        slots.append(slot)

    def first(slot: Slot) -> Slot:
        order.append("first")
        limiter.acquire("https://a.example").addCallback(keep, "again")
        slot.release()
        return slot

    limiter.acquire("https://a.example").addCallback(first)
    limiter.acquire("https://a.example").addCallback(keep, "second")
    held.release()
    assert order == ["first", "second"]
    slots[-1].release()
    assert order == ["first", "second", "again"]


def test_many_withdrawn_waiters_are_pruned() -> None:
    """Withdrawn waiters behind a long-blocked head do not pile up in memory."""
    limiter = SlotLimiter(total=1, per_origin=1)
    held = granted(limiter.acquire("https://a.example"))
    waiters = [limiter.acquire("https://a.example") for _ in range(1000)]
    for d in waiters[1:]:
        d.cancel()
        d.addErrback(lambda f: None)
    queue = limiter._queues["https://a.example"]
    assert len(queue.waiters) < 100 and limiter.waiting == 1
    held.release()
    assert granted(waiters[0]).held


def test_limits_must_be_positive() -> None:
    """A zero cap would block every POST forever: refused."""
    with pytest.raises(ValueError):
        SlotLimiter(total=0, per_origin=1)
    with pytest.raises(ValueError):
        SlotLimiter(total=1, per_origin=0)


def test_slot_key_is_the_origin() -> None:
    """Scheme, host and port: paths and default ports do not make separate origins."""
    assert slot_key("https://Push.Example/a") == slot_key("https://push.example:443/b")
    assert slot_key("https://push.example:8443/a") != slot_key("https://push.example/a")


def test_slot_key_is_origin_of_for_every_url() -> None:
    """The remembered origins (one per authority text) are ``origin_of``'s for every URL
    of the VAPID tests, asked twice and with other paths; a URL with no origin is its
    own key and is not remembered."""
    cache = OriginCache(3)  # small: the memory is cleared as it fills
    for _ in range(2):
        for url, origin in ORIGINS:
            assert slot_key(url) == cache(url) == origin == origin_of(url)
            other = url.split("#")[0] + ("&" if "?" in url else "?") + "other=1"
            assert slot_key(other) == cache(other) == origin
    assert slot_key("no-origin") == "no-origin"
    with pytest.raises(ValueError):
        cache("https://host:99999/")
    assert len(cache._origins) <= 3
