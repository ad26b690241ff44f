"""Wiring: the whole daemon built from a validated Config, top to bottom, in one place.

:func:`build_service` creates the shared objects (:func:`build_app`), the core
service (store, hub, credential watcher), one service per transport and the
listening endpoints, and hands them to :class:`JMAPPushService`. Children start in
the order core, listeners, transports and stop one after the other in reverse:
transports first (every connection is closed with 1001, Web Push records what it
owes), then the listening ports, then the core (the store closes last).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from jmappushd.auth.authenticator import Authenticator, PrincipalSource, ThreadRunner
from jmappushd.config import Config
from jmappushd.context import App
from jmappushd.core.hub import Hub, IBus
from jmappushd.core.signal import StartAbandoned, StartSignal
from jmappushd.daemon.cluster import cluster_bus, cluster_service, node_name
from jmappushd.daemon.core import CoreService
from jmappushd.daemon.gcpolicy import GCPolicy
from jmappushd.daemon.listeners import ListenerService
from jmappushd.daemon.statedir import (
    StateError,
    load_or_create_admin_token,
    prepare_state,
    raise_open_files_limit,
)
from jmappushd.gateway.service import GatewayService
from jmappushd.gateway.wiring import build_gateway
from jmappushd.jmap.core import register_core
from jmappushd.jmap.processor import RequestProcessor
from jmappushd.jmap.registry import MethodRegistry
from jmappushd.jmap.session import SessionURLs
from jmappushd.metrics import Metrics
from jmappushd.net import _fastpath
from jmappushd.net.reserve import DescriptorGuard
from jmappushd.reactor import IDaemonReactor
from jmappushd.store.backends import create_store
from jmappushd.store.interface import IStore
from jmappushd.store.postgresql import PostgreSQLStore
from jmappushd.transports.eventsource.service import EventSourceService
from jmappushd.transports.interface import ITransportService
from jmappushd.transports.webpush.leases import LeaseKeeper
from jmappushd.transports.webpush.service import WebPushService
from jmappushd.transports.websocket.service import WebSocketService
from jmappushd.versions import daemon_version, library_versions
from jmappushd.web.admin import ADMIN_MAX_BODY, build_admin_root
from jmappushd.web.demo import DemoService
from jmappushd.web.root import build_root
from jmappushd.web.site import JMAPSite

__all__ = ["ITransportService", "JMAPPushService", "StateError", "build_app", "build_service",
           "prepare_state", "thread_runner"]

T = TypeVar("T")
S = TypeVar("S", bound=ITransportService)


def thread_runner(reactor: IReactorThreads, pool: ThreadPool | None = None) -> ThreadRunner:
    """Run blocking work (the password KDF) on ``pool``, else the reactor's thread pool."""

    def run_in_thread(f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return threads.deferToThreadPool(reactor, pool or reactor.getThreadPool(), f, *args)

    return run_in_thread


def kdf_thread_pool(config: Config) -> ThreadPool:
    """The password KDF's own threads, as many as ``[auth] max-concurrent-kdf`` allows.

    Not the reactor's pool: that one (10 threads) also resolves host names, so KDFs
    there would cap ``max-concurrent-kdf`` at 10 and could starve name lookups.
    """
    slots = config.auth.max_concurrent_kdf or os.cpu_count() or 1
    return ThreadPool(minthreads=0, maxthreads=slots, name="jmappushd-kdf")


def build_registry() -> MethodRegistry:
    registry = MethodRegistry()
    register_core(registry)
    return registry


def build_app(config: Config, clock: IReactorTime, store: IStore,
              run_in_thread: ThreadRunner, principals: PrincipalSource | None = None,
              bus: IBus | None = None) -> App:
    """Create every shared object; nothing is started yet. ``principals`` replaces the
    store's users (gateway mode); ``bus`` the in-process bus (cluster mode)."""
    registry = build_registry()
    app = App(
        config=config,
        clock=clock,
        store=store,
        hub=Hub(store, bus),
        auth=Authenticator(store, clock, run_in_thread, config.auth.cache_ttl,
                           limits=config.auth, principals=principals),
        registry=registry,
        processor=RequestProcessor(registry, config.jmap.max_calls_in_request,
                                   config.jmap.max_size_response),
        metrics=Metrics(),
        urls=SessionURLs(config.server.public_url),
    )
    app.metrics.track_listeners("all", lambda: app.hub.listener_count)
    kdf = app.auth.kdf
    app.metrics.track_kdf(lambda: kdf.running, lambda: kdf.queued,
                          lambda: kdf.computed, lambda: kdf.shared)
    return app


def one_line(failure: Failure) -> str:
    """A failure's reason as one bounded line (logs that must not carry a traceback)."""
    return " ".join(failure.getErrorMessage().split())[:500] or repr(failure.value)[:500]


class JMAPPushService(MultiService):
    """The daemon: core, listeners and transports, started in order and stopped in reverse."""

    log = Logger()
    # Called when start-up fails after the reactor runs (twistd: exit non-zero afterwards).
    on_start_failure: Callable[[], None] | None = None
    # The process's garbage-collector policy, applied at start (use_gc_policy).
    gc_policy: GCPolicy | None = None

    def __init__(self, app: App, reactor: IDaemonReactor, core: CoreService,
                 listeners: Sequence[ListenerService],
                 transports: Sequence[ITransportService]) -> None:
        super().__init__()
        self.app = app
        self._reactor = reactor
        self.core = core
        self.transports = tuple(transports)
        self._ready = StartSignal()
        core.setServiceParent(self)
        for child in (*listeners, *transports):
            child.setServiceParent(self)

    def use_gc_policy(self, policy: GCPolicy) -> None:
        """Apply ``policy`` when the daemon starts and export its counts. For the twistd
        entry point only: it freezes the heap, which a test process must keep its own."""
        self.gc_policy = policy
        self.app.metrics.track_gc(policy)

    def transport(self, kind: type[S]) -> S:
        """The transport service of this class (tests and tools reach its parts this way)."""
        for transport in self.transports:
            if isinstance(transport, kind):
                return transport
        raise LookupError(f"no {kind.__name__} in this daemon")

    def startService(self) -> None:
        config = self.app.config
        libraries = library_versions()
        self.log.info("jmappushd {version} (Twisted {twisted}, Autobahn {autobahn}, "
                      "cryptography {cryptography}, Python {python})",
                      version=daemon_version(), twisted=libraries["Twisted"],
                      autobahn=libraries["autobahn"], cryptography=libraries["cryptography"],
                      python=libraries["Python"])
        for warning in config.warnings:
            self.log.warn("{warning}", warning=warning)
        soft, hard = raise_open_files_limit(config.server.max_open_files)
        self.log.info("open files limit: soft {soft}, hard {hard}", soft=soft, hard=hard)
        self.app.admin_token = load_or_create_admin_token(config.admin.token_file)
        # The hot paths that read library internals are checked against the installed
        # Twisted/Autobahn once; each one that no longer fits falls back to the public API.
        _fastpath.check()
        if self.gc_policy is not None:
            # Before the children start: the reactor has accepted no connection yet.
            self.gc_policy.apply()
        super().startService()
        defer.ensureDeferred(self._become_ready()).addErrback(self._start_failed)

    async def _become_ready(self) -> None:
        await self.core.when_started()
        for transport in self.transports:
            await transport.when_started()
        urls = self.app.urls
        if urls.base.startswith("http://"):
            self.log.warn("public-url {url} is plain http: for development only; RFC 8620 "
                          "requires HTTPS (SES-1), use an ssl: listener or a TLS proxy",
                          url=urls.base)
        self.log.info("jmappushd ready: session at {url}", url=urls.session)
        self._ready.fire()

    def when_ready(self) -> defer.Deferred[None]:
        """Fires once every part is usable ("jmappushd ready"), or fails with the reason."""
        return self._ready.wait()

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(StartAbandoned):
            self._ready.fire(failure)
            return  # stopped before the store could be opened: nothing failed
        # One line naming the cause (issue 15), no traceback.
        self.log.error("jmappushd could not start: {reason}", reason=one_line(failure))
        self._ready.fire(failure)
        if self.on_start_failure is not None:
            self.on_start_failure()
        self._reactor.stop()

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        if self.gc_policy is not None:
            self.gc_policy.remove()
        self.core.abandon_start()  # transports waiting for a store that never came stop now
        return defer.ensureDeferred(self._stop_children())

    async def _stop_children(self) -> None:
        # One after the other: the store must outlive what Web Push records at shutdown.
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("stopping {child!r} failed", child=child)


def _cluster_health(leases: LeaseKeeper | None, store: PostgreSQLStore | None
                    ) -> Callable[[], dict[str, object]] | None:
    """``/health``'s ``cluster`` block: the leases, and the changes ``states`` lags by."""
    if leases is None or store is None:
        return None

    def health() -> dict[str, object]:
        return leases.health() | {"unfoldedChanges": store.unfolded_changes}

    return health


def build_service(config: Config, reactor: IDaemonReactor,
                  store: IStore | None = None) -> JMAPPushService:
    """The whole daemon, ready for ``setServiceParent`` or twistd."""
    if store is None:
        store = create_store(config.storage, reactor)
    gateway = build_gateway(config, reactor, store) if config.upstream.enabled else None
    kdf_pool = kdf_thread_pool(config)
    # Cluster mode: every node on the database reads the shared change log (docs/cluster.rst).
    shared = store if isinstance(store, PostgreSQLStore) else None
    bus = cluster_bus(shared, reactor) if shared is not None else None
    app = build_app(config, reactor, store, thread_runner(reactor, kdf_pool),
                    gateway.principals if gateway is not None else None, bus)
    core = CoreService(app, kdf_pool)
    eventsource = EventSourceService(app, reactor)
    websocket = WebSocketService(app, reactor)
    # Cluster mode: each push subscription is delivered by the node holding its bucket.
    leases = LeaseKeeper(shared, reactor, node_name(config), config.cluster.lease_time,
                         config.push.push_timeout_s) if shared is not None else None
    if leases is not None:
        app.metrics.track_leases(lambda: len(leases.held), lambda: leases.live_nodes)
    if shared is not None:
        app.metrics.track_unfolded(lambda: shared.unfolded_changes)
    webpush = WebPushService(app, reactor, core, leases=leases)
    transports: list[ITransportService] = [eventsource, websocket, webpush]
    if gateway is not None:
        gateway.attach(app.hub)
        app.processor.set_forwarder(gateway.forward)
        transports.insert(0, GatewayService(  # stops last, before the core
            gateway, core, (eventsource.registry, websocket.factory.registry)))
    if bus is not None and shared is not None:
        transports.insert(0, cluster_service(bus, app.hub, shared, reactor, core, leases))
    demo = DemoService(app, reactor, core) if config.server.demo_page else None
    if demo is not None:
        transports.append(demo)
    access_log = config.log.access_log
    header_timeout = config.server.header_timeout
    jmap_site = JMAPSite(
        build_root(app, {b"eventsource": eventsource.resource, b"ws": websocket.resource},
                   demo.resource if demo is not None else None),
        max_body=config.jmap.max_size_request, name="jmap", access_log=access_log,
        clients=app.clients, header_timeout=header_timeout, timers=app.wheel,
        http2=config.server.http2, reactor=reactor)
    admin_root = build_admin_root(app, webpush.runtime,
                                  _cluster_health(leases, shared))
    admin_site = JMAPSite(admin_root, max_body=ADMIN_MAX_BODY,
                          name="admin", access_log=access_log, clients=app.clients,
                          header_timeout=header_timeout, timers=app.wheel,
                          http2=config.server.http2, reactor=reactor)
    # One spare descriptor for all listeners; the per-address limit is the public one's.
    guard = DescriptorGuard(reactor)
    per_address = config.server.max_connections_per_address
    listeners = [ListenerService(reactor, d, jmap_site, per_address, guard)
                 for d in config.server.listen]
    listeners += [ListenerService(reactor, d, admin_site, 0, guard) for d in config.admin.listen]
    return JMAPPushService(app, reactor, core, listeners, transports)
