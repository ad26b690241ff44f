"""After ``DeliveryService.stop()`` returns nothing it started still runs or fires later:
no POST, slot waiter, verification, refresh or store write (DESIGN: every piece of work
owned; issue 10).

Clock-driven with the fake transport; the memory store's ``hold`` keeps its answers
back, so a write or a read is still under way when ``stop`` is called.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import LogEvent, globalLogPublisher

from tests.push_fakes import Harness
from tests.store_backends import fired
from tests.support import log_into


def started(count: int = 1, **config: Any) -> Harness:
    """A harness with ``count`` verified subscriptions S0.. on one push service."""
    h = Harness(push_throttle=0, **config)
    h.start(*[h.record(f"S{i}", url=f"https://push.example/S{i}") for i in range(count)])
    return h


def test_stop_waits_for_a_persist_under_way() -> None:
    """The result of a POST is being recorded when shutdown starts: ``stop`` returns only
    once that write is done (the store may be closed right after)."""
    h = started()
    h.publish({"A": {"Email": "s1"}})
    h.store.hold()
    h.transport.pop().answer(201)  # the delivered state is being recorded
    done = defer.ensureDeferred(h.delivery.stop())
    assert not done.called
    h.store.release()
    assert done.called
    assert h.store.last_saved("S0").pending == {}


def test_stop_waits_for_a_delete_under_way() -> None:
    """A subscription destroyed (HTTP 410) just before shutdown: ``stop`` waits for its
    deletion from the store."""
    h = started()
    h.publish({"A": {"Email": "s1"}})
    h.store.hold()
    h.transport.pop().answer(410)
    done = defer.ensureDeferred(h.delivery.stop())
    assert not done.called
    h.store.release()
    assert done.called and "S0" not in h.store.subs


def test_stop_waits_for_a_credentials_refresh() -> None:
    """A refresh (credentials changed) is reading the store when shutdown starts: ``stop``
    returns after it, so it never removes subscriptions from a stopped service."""
    h = started(2)
    fired(h.store.delete_push_subscription("S1"))  # deleted behind the service's back
    h.store.hold()
    h.delivery.invalidated()
    done = defer.ensureDeferred(h.delivery.stop())
    assert not done.called
    h.store.release()
    assert done.called
    assert h.delivery.get("S1") is None and h.delivery.get("S0") is not None


def test_nothing_fires_after_stop() -> None:
    """POSTs in flight, StateChanges and a PushVerification waiting for a slot: after
    ``stop`` no POST starts, no error is logged and nothing is left on the clock, even
    when the cancelled POSTs' transport answers late."""
    h = started(3, max_in_flight_per_origin=1)
    h.publish({"A": {"Email": "s1"}})
    h.delivery.created(h.record("NEW", verified=False, url="https://push.example/NEW"))
    logged: list[LogEvent] = []
    observer = log_into(logged)
    globalLogPublisher.addObserver(observer)
    try:
        done = defer.ensureDeferred(h.delivery.stop())
        assert done.called
        [call] = h.transport.calls
        assert call.d.called  # cancelled
        h.clock.advance(86400)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert len(h.transport.calls) == 1
    assert h.clock.getDelayedCalls() == []
    assert [e for e in logged if "log_failure" in e] == []
