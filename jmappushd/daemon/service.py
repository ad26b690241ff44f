"""Wiring: the daemon's MultiService, built from a validated Config.

``prepare_state`` runs before the reactor (from ``tap.Options.postOptions``), so
an unusable state directory, token file or database stops twistd with one clear
line instead of a traceback after the ports are bound.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.web.resource import IResource

from jmappushd.auth.authenticator import Authenticator
from jmappushd.config import Config
from jmappushd.core.hub import Hub
from jmappushd.daemon.context import App
from jmappushd.jmap.core import register_core
from jmappushd.jmap.processor import RequestProcessor
from jmappushd.jmap.registry import MethodRegistry
from jmappushd.jmap.session import SessionURLs
from jmappushd.metrics import Metrics
from jmappushd.store.backends import create_store, prepare_store
from jmappushd.store.interface import IStore
from jmappushd.store.records import StoreError
from jmappushd.web.admin import ADMIN_MAX_BODY, build_admin_root
from jmappushd.web.root import build_root
from jmappushd.web.site import JMAPSite


class StateError(Exception):
    """The state directory, token file or database cannot be used."""


def load_or_create_admin_token(path: str) -> str:
    """Read the admin token; create it (0600, 256 random bits) on first start."""
    token_path = Path(path)
    if not token_path.exists():
        token_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        return token
    mode = token_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StateError(f"{path}: the admin token file must not be accessible to group or "
                         f"others (chmod 600 {path})")
    token = token_path.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise StateError(f"{path}: the admin token is missing or shorter than 16 characters")
    return token


def prepare_state(config: Config) -> None:
    """Create the state directory, the admin token and the store's schema, or raise
    StateError."""
    try:
        Path(config.server.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        load_or_create_admin_token(config.admin.token_file)
    except OSError as exc:
        raise StateError(f"{exc.filename}: {exc.strerror}") from exc
    try:
        prepare_store(config.storage)
    except StoreError as exc:
        raise StateError(str(exc)) from exc


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE (to the hard limit when ``wanted`` is 0)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted <= 0 else min(wanted, hard)
    if hard == resource.RLIM_INFINITY and wanted <= 0:
        target = max(soft, 1 << 20)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def build_registry() -> MethodRegistry:
    registry = MethodRegistry()
    register_core(registry)
    return registry


def build_app(config: Config, reactor: Any, store: IStore | None = None) -> App:
    """Create every shared object; nothing is started yet."""
    store = store if store is not None else create_store(config.storage, reactor)

    def run_in_thread(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    registry = build_registry()
    app = App(
        config=config,
        clock=reactor,
        store=store,
        hub=Hub(store),
        auth=Authenticator(store, reactor, run_in_thread, config.auth.cache_ttl),
        registry=registry,
        processor=RequestProcessor(registry, config.jmap.max_calls_in_request),
        metrics=Metrics(),
        urls=SessionURLs(config.server.public_url),
    )
    app.metrics.track_listeners("all", lambda: app.hub.listener_count)
    return app


class JMAPPushService(MultiService):
    """Owns the App, its listeners and every timer; stops them all on shutdown."""

    log = Logger()

    def __init__(self, app: App, reactor: Any) -> None:
        super().__init__()
        self.app = app
        self._reactor = reactor
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.shutdown_hooks: list[Callable[[], Awaitable[None] | None]] = []
        # Run after the store and hub are up and before "ready": a transport whose state
        # lives in the store (push: the VAPID key) is complete once the daemon says ready.
        self.startup_hooks: list[Callable[[], Awaitable[None]]] = []
        self.jmap_children: dict[bytes, IResource] = {}

    def add_listeners(self) -> None:
        """Bind the JMAP and admin endpoints (fails synchronously, as twistd expects)."""
        config = self.app.config
        access_log = config.log.access_log
        jmap_site = JMAPSite(build_root(self.app, self.jmap_children),
                             max_body=config.jmap.max_size_request, name="jmap",
                             access_log=access_log)
        admin_site = JMAPSite(build_admin_root(self.app), max_body=ADMIN_MAX_BODY, name="admin",
                              access_log=access_log)
        for description in config.server.listen:
            self._listen(description, jmap_site)
        for description in config.admin.listen:
            self._listen(description, admin_site)

    def _listen(self, description: str, site: JMAPSite) -> None:
        svc = strports.service(description, site, reactor=self._reactor)
        svc._raiseSynchronously = True  # type: ignore[attr-defined]
        svc.setServiceParent(self)

    def startService(self) -> None:
        soft, hard = raise_open_files_limit(self.app.config.server.max_open_files)
        self.log.info("open files limit: soft {soft}, hard {hard}", soft=soft, hard=hard)
        self.app.admin_token = load_or_create_admin_token(self.app.config.admin.token_file)
        super().startService()
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._start_failed)

    async def _start(self) -> None:
        await self.app.store.open()
        await self.app.hub.start()
        self.app.auth.start()
        for hook in self.startup_hooks:
            await hook()
        if self.app.urls.base.startswith("http://"):
            self.log.warn("public-url {url} is plain http: for development only; RFC 8620 "
                          "requires HTTPS (SES-1), use an ssl: listener or a TLS proxy",
                          url=self.app.urls.base)
        self.log.info("jmappushd ready: session at {url}", url=self.app.urls.session)
        self.ready.callback(None)

    def _start_failed(self, failure: Any) -> None:
        self.log.failure("jmappushd could not start", failure)
        if IReactorCore.providedBy(self._reactor):
            self._reactor.stop()

    async def _stop(self) -> None:
        for hook in reversed(self.shutdown_hooks):
            try:
                result = hook()
                if result is not None:
                    await result
            except Exception:
                self.log.failure("shutdown hook failed")
        self.app.auth.stop()
        await defer.maybeDeferred(super().stopService)
        await self.app.store.close()

    def stopService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())


def build_service(config: Config, reactor: Any) -> JMAPPushService:
    """The whole daemon, ready for ``setServiceParent`` or twistd."""
    from jmappushd.transports.eventsource import resource as eventsource
    from jmappushd.transports.webpush import service as push_setup
    from jmappushd.transports.websocket import service as websocket
    app = build_app(config, reactor)
    service = JMAPPushService(app, reactor)
    eventsource.install(service)
    websocket.install(service)
    push_setup.install(service)
    service.add_listeners()
    return service


__all__ = ["JMAPPushService", "StateError", "build_app", "build_service",
           "prepare_state"]
