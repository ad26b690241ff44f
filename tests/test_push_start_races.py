"""Web Push stopped or invalidated while it starts (issue 10, review of the start-up):
a stop during start-up is never undone by the start finishing, and credentials that
change while the subscriptions load are applied once start completes.

Clock-driven with the fake transport; the memory store's ``hold`` keeps answers back
so the start is still under way when the stop or the invalidation arrives.
"""

from __future__ import annotations

import dataclasses

from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from jmappushd.config import Config
from jmappushd.daemon.service import build_app
from jmappushd.jmap.registry import CallContext, MethodError
from jmappushd.store.records import Account
from jmappushd.transports.interface import IStarted
from jmappushd.transports.webpush.keys import META_KEY
from jmappushd.transports.webpush.service import WebPushService
from tests.push_fakes import Harness, PushStore
from tests.support import no_threads
from tests.test_push_runtime import ALICE, runtime_on


class HoldAtAccounts(PushStore):
    """Holds every answer from the first accounts lookup on: the push runtime is then
    inside ``DeliveryService.start``, its VAPID key and subscriptions loaded."""

    def accounts_for_user(self, user_id: str) -> Deferred[list[Account]]:
        self.hold()
        return super().accounts_for_user(user_id)


@implementer(IStarted)
class CoreUp:
    def when_started(self) -> Deferred[None]:
        return succeed(None)


def server_unavailable(d: Deferred[object]) -> bool:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    return (len(failures) == 1 and isinstance(failures[0].value, MethodError)
            and failures[0].value.type == "serverUnavailable")


def test_stop_while_delivery_loads_accounts_is_not_undone() -> None:
    """``DeliveryService.stop`` while ``start`` awaits a user's accounts: once the answer
    arrives no hub registration is made, nothing is recovered or sent, nothing is left
    on the clock (the stop flag is asked after the await, not passed before it)."""
    h = Harness(push_throttle=0)
    records = [h.record("S0")]
    h.store.hold()
    starting = defer.ensureDeferred(h.delivery.start(records))
    assert not starting.called
    stopping = defer.ensureDeferred(h.delivery.stop())
    h.store.release()
    assert starting.called and stopping.called
    sub = h.delivery.get("S0")
    assert sub is not None and sub.hub_sub is None
    h.publish({"A": {"Email": "s1"}})
    h.clock.advance(86400)
    assert h.transport.calls == []
    assert h.clock.getDelayedCalls() == []


def test_invalidation_during_start_is_applied_when_start_completes() -> None:
    """A token revoked after the subscriptions were read but before delivery started: its
    subscription, already deleted from the store, is dropped from memory once start
    completes, so no StateChange is POSTed for it (C-WP-*, credentials policy)."""
    h = Harness(push_throttle=0)
    records = [h.record("S0"), h.record("S1")]
    h.store.hold()
    starting = defer.ensureDeferred(h.delivery.start(records))
    h.store.delete_push_subscription("S1")  # done at once; its answer is held
    h.delivery.invalidated()
    h.store.release()
    assert starting.called
    assert h.delivery.get("S1") is None and h.delivery.get("S0") is not None
    h.publish({"A": {"Email": "s1"}})
    assert [call.url for call in h.transport.calls] == ["https://push.example/S0"]


def test_runtime_stopped_in_delivery_start_never_reports_started() -> None:
    """``PushRuntime.stop`` while delivery is starting: the one start signal fails, so
    method calls, before and after, get serverUnavailable instead of running against
    a stopped service, and no hub registration survives the stop."""
    h = Harness()
    h.store = HoldAtAccounts()
    h.store.set_meta(META_KEY, h.key.to_private_string())
    h.record("S0")
    runtime, pool = runtime_on(h, h.store)
    ctx = CallContext(principal=ALICE, session_state="s")
    early = defer.ensureDeferred(runtime.methods.handle_get(ctx, {}))
    starting = defer.ensureDeferred(runtime.start())
    assert not starting.called  # inside DeliveryService.start, accounts held
    stopping = defer.ensureDeferred(runtime.stop())
    h.store.release()
    assert starting.called and stopping.called and pool.closed
    sub = runtime.delivery.get("S0")
    assert sub is not None and sub.hub_sub is None
    assert server_unavailable(early)
    assert server_unavailable(defer.ensureDeferred(runtime.methods.handle_get(ctx, {})))


def test_stop_service_waits_for_the_start_under_way() -> None:
    """``stopService`` during start-up returns only once the start has stopped early, so
    no store query of Web Push outlives it (the core closes the store next); the daemon's
    readiness still fires and method calls get serverUnavailable."""
    h = Harness()
    h.store.set_meta(META_KEY, h.key.to_private_string())
    h.record("S0")
    app = build_app(dataclasses.replace(Config(), push=h.config), h.clock, h.store, no_threads)
    defer.ensureDeferred(app.hub.start())
    service = WebPushService(app, MemoryReactorClock(), CoreUp())  # type: ignore[arg-type]
    h.store.hold()
    service.startService()
    ready = service.when_started()
    stopping = service.stopService()
    assert not stopping.called  # the VAPID key is still loading
    h.store.release()
    assert stopping.called and ready.called and ready.result is None
    assert service.runtime.delivery.get("S0") is None  # never tracked: start stopped early
    ctx = CallContext(principal=ALICE, session_state="s")
    assert server_unavailable(defer.ensureDeferred(service.runtime.methods.handle_get(ctx, {})))
    assert h.clock.getDelayedCalls() == []
