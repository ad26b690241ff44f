"""The core service: the store, the hub and the credential watcher, first up and last down.

Transports depend on it: the hub answers publishes and catch-ups only once the store
has told it its position, and Web Push loads its subscriptions from the store. Its
``startService`` begins opening the store; :meth:`CoreService.when_started` fires
once everything is usable; transports that need the store wait on it.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from jmappushd.context import App
from jmappushd.core.signal import StartSignal
from jmappushd.transports.interface import IStarted


@implementer(IStarted)
class CoreService(Service):
    """Opens the store, starts the hub and the auth-generation watcher; closes them last."""

    log = Logger()
    name = "core"

    def __init__(self, app: App, threads: ThreadPool | None = None) -> None:
        """``threads``: a pool of the core's own (the KDF's), started and stopped with it."""
        self._app = app
        self._threads = threads
        self._starting: defer.Deferred[None] | None = None
        self._started = StartSignal()

    def startService(self) -> None:
        super().startService()
        if self._threads is not None:
            self._threads.start()  # threads are made on demand, up to its maximum
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addCallbacks(lambda _: self._started.fire(), self._started.fire)

    async def _start(self) -> None:
        app = self._app
        await app.store.open()
        await app.hub.start()
        app.auth.start()

    def when_started(self) -> defer.Deferred[None]:
        """Fires once the store is open and the hub knows its position (or fails)."""
        return self._started.wait()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._app.auth.stop()
        if self._starting is not None:
            await self._starting  # a store still opening is closed once it opened or failed
        await self._app.store.close()
        if self._threads is not None:
            self._threads.stop()  # joins its idle workers; a KDF in flight finishes first
