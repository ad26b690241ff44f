"""The core service: the store, the hub and the credential watcher, first up and last down.

Transports depend on it: the hub answers publishes and catch-ups only once the store
has told it its position, and Web Push loads its subscriptions from the store. Its
``startService`` begins opening the store; :meth:`CoreService.when_started` fires
once everything is usable; transports that need the store wait on it.

A database server that cannot be reached at start (StoreUnavailable) is waited for:
the open is retried, 1 s doubling to 30 s, each failure logged, and ``/health``
answers 503 until it succeeds. Anything else (a schema newer than this release)
fails the start.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from jmappushd.context import App
from jmappushd.core.signal import StartAbandoned, StartSignal
from jmappushd.store.records import StoreUnavailable
from jmappushd.transports.interface import IStarted

RETRY_FIRST = 1.0  # s before the second attempt to open an unreachable store
RETRY_MAX = 30.0  # s between attempts at most


@implementer(IStarted)
class CoreService(Service):
    """Opens the store, starts the hub and the auth-generation watcher; closes them last."""

    log = Logger()
    name = "core"
    _retry: defer.Deferred[None] | None = None  # the wait before the next open attempt
    _abandoned = False

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
        await self._open_store()
        await app.hub.start()
        app.auth.start()

    async def _open_store(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                await self._app.store.open()
            except StoreUnavailable as exc:
                self.log.warn("store unavailable, next attempt in {delay:.0f} s: {reason}",
                              delay=delay, reason=str(exc))
            else:
                if delay > RETRY_FIRST:
                    self.log.info("store reachable again")
                return
            if self._abandoned:
                raise StartAbandoned()
            self._retry = task.deferLater(self._app.clock, delay, lambda: None)
            try:
                await self._retry
            except defer.CancelledError:
                raise StartAbandoned() from None
            finally:
                self._retry = None
            delay = min(delay * 2, RETRY_MAX)

    def abandon_start(self) -> None:
        """Stop waiting for the store (the daemon is stopping); a start under way fails
        with StartAbandoned, so whoever waits for the core stops waiting."""
        self._abandoned = True
        if self._retry is not None:
            self._retry.cancel()

    def when_started(self) -> defer.Deferred[None]:
        """Fires once the store is open and the hub knows its position (or fails)."""
        return self._started.wait()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._app.auth.stop()
        self.abandon_start()
        if self._starting is not None:
            await self._starting  # a store still opening is closed once it opened or failed
        await self._app.store.close()
        if self._threads is not None:
            self._threads.stop()  # joins its idle workers; a KDF in flight finishes first
