"""Wiring: the whole daemon built from a validated Config, top to bottom, in one place.

:func:`build_service` creates the shared objects (:func:`build_app`), the core
service (store, hub, credential watcher), one service per transport and the
listening endpoints, and hands them to :class:`JMAPPushService`. Children start in
the order core, listeners, transports and stop one after the other in reverse:
transports first (every connection is closed with 1001, Web Push records what it
owes), then the listening ports, then the core (the store closes last).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from jmappushd.auth.authenticator import Authenticator, ThreadRunner
from jmappushd.config import Config
from jmappushd.context import App
from jmappushd.core.hub import Hub
from jmappushd.core.signal import StartSignal
from jmappushd.daemon.core import CoreService
from jmappushd.daemon.listeners import ListenerService
from jmappushd.daemon.statedir import (
    StateError,
    load_or_create_admin_token,
    prepare_state,
    raise_open_files_limit,
)
from jmappushd.jmap.core import register_core
from jmappushd.jmap.processor import RequestProcessor
from jmappushd.jmap.registry import MethodRegistry
from jmappushd.jmap.session import SessionURLs
from jmappushd.metrics import Metrics
from jmappushd.net import _fastpath
from jmappushd.reactor import IDaemonReactor
from jmappushd.store.backends import create_store
from jmappushd.store.interface import IStore
from jmappushd.transports.eventsource.service import EventSourceService
from jmappushd.transports.interface import ITransportService
from jmappushd.transports.webpush.service import WebPushService
from jmappushd.transports.websocket.service import WebSocketService
from jmappushd.web.admin import ADMIN_MAX_BODY, build_admin_root
from jmappushd.web.root import build_root
from jmappushd.web.site import JMAPSite

__all__ = ["ITransportService", "JMAPPushService", "StateError", "build_app", "build_service",
           "prepare_state", "thread_runner"]

T = TypeVar("T")
S = TypeVar("S", bound=ITransportService)


def thread_runner(reactor: IReactorThreads) -> ThreadRunner:
    """Run blocking work (the password KDF) on the reactor's thread pool."""

    def run_in_thread(f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    return run_in_thread


def build_registry() -> MethodRegistry:
    registry = MethodRegistry()
    register_core(registry)
    return registry


def build_app(config: Config, clock: IReactorTime, store: IStore,
              run_in_thread: ThreadRunner) -> App:
    """Create every shared object; nothing is started yet."""
    registry = build_registry()
    app = App(
        config=config,
        clock=clock,
        store=store,
        hub=Hub(store),
        auth=Authenticator(store, clock, run_in_thread, config.auth.cache_ttl),
        registry=registry,
        processor=RequestProcessor(registry, config.jmap.max_calls_in_request,
                                   config.jmap.max_size_response),
        metrics=Metrics(),
        urls=SessionURLs(config.server.public_url),
    )
    app.metrics.track_listeners("all", lambda: app.hub.listener_count)
    return app


class JMAPPushService(MultiService):
    """The daemon: core, listeners and transports, started in order and stopped in reverse."""

    log = Logger()

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

    def transport(self, kind: type[S]) -> S:
        """The transport service of this class (tests and tools reach its parts this way)."""
        for transport in self.transports:
            if isinstance(transport, kind):
                return transport
        raise LookupError(f"no {kind.__name__} in this daemon")

    def startService(self) -> None:
        config = self.app.config
        soft, hard = raise_open_files_limit(config.server.max_open_files)
        self.log.info("open files limit: soft {soft}, hard {hard}", soft=soft, hard=hard)
        self.app.admin_token = load_or_create_admin_token(config.admin.token_file)
        # The hot paths that read library internals are checked against the installed
        # Twisted/Autobahn once; each one that no longer fits falls back to the public API.
        _fastpath.check()
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
        self.log.failure("jmappushd could not start", failure)
        self._ready.fire(failure)
        self._reactor.stop()

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        return defer.ensureDeferred(self._stop_children())

    async def _stop_children(self) -> None:
        # One after the other: the store must outlive what Web Push records at shutdown.
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("stopping {child!r} failed", child=child)


def build_service(config: Config, reactor: IDaemonReactor,
                  store: IStore | None = None) -> JMAPPushService:
    """The whole daemon, ready for ``setServiceParent`` or twistd."""
    if store is None:
        store = create_store(config.storage, reactor)
    app = build_app(config, reactor, store, thread_runner(reactor))
    core = CoreService(app)
    eventsource = EventSourceService(app, reactor)
    websocket = WebSocketService(app, reactor)
    webpush = WebPushService(app, reactor, core)
    access_log = config.log.access_log
    jmap_site = JMAPSite(
        build_root(app, {b"eventsource": eventsource.resource, b"ws": websocket.resource}),
        max_body=config.jmap.max_size_request, name="jmap", access_log=access_log)
    admin_site = JMAPSite(build_admin_root(app, webpush.runtime), max_body=ADMIN_MAX_BODY,
                          name="admin", access_log=access_log)
    listeners = [ListenerService(reactor, d, jmap_site) for d in config.server.listen]
    listeners += [ListenerService(reactor, d, admin_site) for d in config.admin.listen]
    return JMAPPushService(app, reactor, core, listeners, [eventsource, websocket, webpush])
