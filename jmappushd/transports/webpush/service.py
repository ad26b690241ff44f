"""The Web Push side of the daemon: its runtime (key ring, delivery, pool) and its service.

At construction the methods are registered and the HTTP client is built; the store is
not open yet, so everything that reads it (the VAPID key, the subscriptions) runs once
the core service has started. Method calls wait for that. Shutdown stops the tick, cancels
in-flight POSTs, records what is owed and closes the connection pool.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from jmappushd.context import App
from jmappushd.core.signal import StartAbandoned, StartSignal
from jmappushd.jmap.registry import CORE_CAPABILITY, MethodError
from jmappushd.reactor import IDaemonReactor
from jmappushd.transports.interface import IStarted, ITransportService
from jmappushd.transports.webpush.delivery import DeliveryService
from jmappushd.transports.webpush.keys import (
    VAPID_CAPABILITY,
    KeyRing,
    forget_previous_key,
    load_or_create_key,
    load_previous_key,
    store_new_key,
)
from jmappushd.transports.webpush.keywatch import KeyWatcher, stored_key_differs
from jmappushd.transports.webpush.leases import LeaseKeeper
from jmappushd.transports.webpush.methods import PushSubscriptionMethods
from jmappushd.transports.webpush.sender import (
    AgentTransport,
    PushTransport,
    Sender,
    build_agent,
)

__all__ = ["PushRuntime", "WebPushService"]


class PushRuntime:
    """The push side of one daemon: key ring, delivery service, HTTP pool, lifecycle."""

    log = Logger()

    def __init__(self, app: App, transport: PushTransport,
                 pool: HTTPConnectionPool | None = None,
                 leases: LeaseKeeper | None = None) -> None:
        """``leases``: cluster mode, where this node delivers only the buckets it holds."""
        config = app.config.push
        self.app = app
        self.leases = leases
        self.keyring = KeyRing(app.clock, config.vapid_subject)
        self.sender = Sender(transport, self.keyring, app.clock, config, app.metrics)
        self.delivery = DeliveryService(app.store, app.hub, app.clock, config, self.sender,
                                        app.metrics, ownership=leases)
        self.methods = PushSubscriptionMethods(app.config, app.clock, app.store, app.hub,
                                               self.delivery, self.keyring, self.wait_started)
        self._pool = pool
        self.started = StartSignal()  # fails if start failed or was stopped (see stop)
        self._stopped = False
        self._transition: IDelayedCall | None = None
        # A rotation here and one followed from the store never interleave.
        self._keys_lock = defer.DeferredLock()
        self.keywatch = KeyWatcher(app.clock, self.follow_rotation)

    def register(self) -> None:
        """Add the methods (core, RFC 8620 §7.2) to the shared registry."""
        registry = self.app.registry
        registry.register("PushSubscription/get", CORE_CAPABILITY, self.methods.handle_get)
        registry.register("PushSubscription/set", CORE_CAPABILITY, self.methods.handle_set)
        self.app.auth.on_invalidate(self.delivery.invalidated)

    async def wait_started(self) -> None:
        """Method calls wait here until the key and the subscriptions are loaded."""
        try:
            await self.started.wait()
        except Exception:
            raise MethodError("serverUnavailable",
                              "Push subscriptions are not available.") from None

    def begin_stop(self) -> None:
        """A start still under way stops at its next step (before any delivery starts)."""
        self._stopped = True

    async def start(self) -> None:
        """Load (or create) the VAPID key, then the subscriptions, then start delivering."""
        if self._stopped:
            self._stopped_before_start()
            return
        store = self.app.store
        await self._load_keys()
        stale = await store.delete_push_subscriptions_except_keys(self.keyring.key_ids)
        if stale:
            self.log.info("destroyed {count} subscriptions of an old VAPID key", count=len(stale))
        # Cluster mode: the lease keeper hands this node its buckets' subscriptions.
        records = [] if self.leases is not None else await store.all_push_subscriptions()
        if not self._stopped:
            await self.delivery.start(records)
        if self._stopped:
            self._stopped_before_start()
            return
        if self.leases is not None:
            self.leases.start(self.delivery)
        self.started.fire()
        self.keywatch.start()

    async def _load_keys(self) -> None:
        """The store's key (created on first start) and a running transition's previous
        key into the ring, its timer and the session (at start and when following)."""
        store = self.app.store
        key = await load_or_create_key(store)
        previous = await load_previous_key(store)
        self._cancel_transition()
        self.keyring.set_current(key)
        if previous is not None and previous[1] > self.app.clock.seconds():
            if previous[0].key_id != key.key_id:
                self.keyring.keep(previous[0])  # a rotation's transition is still running
                self._schedule_transition_end(previous[0].key_id, previous[1])
        elif previous is not None:
            await forget_previous_key(store)
        self.app.registry.add_capability(VAPID_CAPABILITY, self.keyring.capability())

    async def follow_rotation(self) -> bool:
        """Adopt a key another node rotated to (issue 13); False if the store's is ours.

        The ring, the transition and the session follow the store; subscriptions of
        keys no longer held are destroyed (the rotating node did so already, this makes
        sure) and delivery forgets every one the store no longer has."""
        async with self._keys_lock:
            if self._stopped or not await stored_key_differs(self.app.store, self.keyring):
                return False
            old = self.keyring.current.key_id
            await self._load_keys()
            await self._destroy_other_keys()
        self.delivery.forget_other_keys(self.keyring.key_ids)  # destroyed with their key
        self.log.info("followed a VAPID key rotation from {old} to {key_id}",
                      old=old, key_id=self.keyring.current.key_id)
        return True

    def _stopped_before_start(self) -> None:
        self.started.fire(Failure(defer.CancelledError("push stopped during start-up")))

    def start_failed(self, failure: Failure) -> None:
        """Log why push could not start; method calls then get serverUnavailable."""
        reason = " ".join(failure.getErrorMessage().split())[:500] or repr(failure.value)[:500]
        self.log.error("push delivery could not start: {reason}", reason=reason)
        self.started.fire(failure)

    def application_server_key(self) -> str:
        """The current VAPID public key as the session advertises it (87 characters)."""
        return self.keyring.capability()["applicationServerKey"]

    async def rotate_key(self) -> list[str]:
        """New VAPID key (SES-16). Old-key subscriptions are destroyed at once, or, with
        ``vapid-rotation-transition``, keep the old key until the period ends (C-V-2,
        VAPID-13). Returns the ids destroyed now."""
        async with self._keys_lock:
            return await self._rotate_key()

    async def _rotate_key(self) -> list[str]:
        transition = self.app.config.push.vapid_rotation_transition
        old = self.keyring.current
        until = self.app.clock.seconds() + transition if transition > 0 else 0.0
        key = await store_new_key(self.app.store, old if transition > 0 else None, until)
        self._cancel_transition()  # an earlier transition's key ends now
        self.keyring.set_current(key)
        if transition > 0:
            self.keyring.keep(old)
            self._schedule_transition_end(old.key_id, until)
        self.app.registry.add_capability(VAPID_CAPABILITY, self.keyring.capability())
        return await self._destroy_other_keys()

    async def _destroy_other_keys(self) -> list[str]:
        gone = await self.app.store.delete_push_subscriptions_except_keys(self.keyring.key_ids)
        for sub_id in gone:
            self.delivery.forget(sub_id)
        return gone

    def _schedule_transition_end(self, key_id: str, until: float) -> None:
        self._cancel_transition()
        delay = max(0.0, until - self.app.clock.seconds())
        self._transition = self.app.clock.callLater(delay, self._end_transition, key_id)

    def _cancel_transition(self) -> None:
        timer, self._transition = self._transition, None
        if timer is not None and timer.active():
            timer.cancel()

    def _end_transition(self, key_id: str) -> None:
        self._transition = None
        self.keyring.drop(key_id)
        d = defer.ensureDeferred(self._finish_transition(key_id))
        d.addErrback(lambda f: self.log.failure("ending the VAPID key transition failed", f))

    async def _finish_transition(self, key_id: str) -> None:
        gone = await self._destroy_other_keys()
        self.delivery.forget_other_keys(self.keyring.key_ids)  # also if another node did
        await forget_previous_key(self.app.store)
        self.log.info("VAPID key {key_id} retired; {count} subscriptions destroyed",
                      key_id=key_id, count=len(gone))

    async def stop(self) -> None:
        """Shutdown: stop delivering, record what is owed, close the pool.

        A start under way is the caller's to wait for (:class:`WebPushService`) after
        :meth:`begin_stop`; method calls still waiting get serverUnavailable."""
        self.begin_stop()
        await self.keywatch.stop()
        self._cancel_transition()
        if self.leases is not None:
            self.leases.begin_stop()
        await self.delivery.stop()
        if self.leases is not None:
            await self.leases.stop()  # after delivery recorded what is owed
        if self._pool is not None:
            await self._pool.closeCachedConnections()
        self._stopped_before_start()  # no-op once start has finished


@implementer(ITransportService)
class WebPushService(Service):
    """PushSubscription methods and Web Push delivery as a service of the daemon.

    Built with the daemon (the methods are registered at once, so the session lists
    them); once the core is up it loads the VAPID key and the subscriptions. Push
    failing to start does not stop the daemon: its methods answer
    ``serverUnavailable`` and the failure is logged.
    """

    name = "webpush"

    def __init__(self, app: App, reactor: IDaemonReactor, core: IStarted,
                 tls_policy: IPolicyForHTTPS | None = None,
                 leases: LeaseKeeper | None = None) -> None:
        config = app.config.push
        agent, pool = build_agent(reactor, config.allow_private_urls, config.push_timeout_s,
                                  tls_policy, keep_per_host=config.max_in_flight_per_origin)
        self.runtime = PushRuntime(app, AgentTransport(agent, reactor, config.push_timeout_s),
                                   pool, leases)
        self.runtime.register()
        self._core = core
        self._starting: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._starting = defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        try:
            await self._core.when_started()
            await self.runtime.start()
        except StartAbandoned:
            self.runtime.started.fire(Failure())  # stopped before the store opened
        except Exception:
            self.runtime.start_failed(Failure())

    def when_started(self) -> defer.Deferred[None]:
        """Fires once the key and subscriptions are loaded (or loading failed and was
        logged): the daemon says ready only then, so the first session is complete."""
        waiting = self.runtime.started.wait()
        waiting.addErrback(lambda _: None)  # logged by start_failed; the daemon still runs
        return waiting

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """Stop once the start under way (if any) has stopped early: delivery, hub
        registrations and store reads never outlive the service (the core closes the
        store after this)."""
        self.runtime.begin_stop()
        if self._starting is not None:
            await self._starting
        await self.runtime.stop()
