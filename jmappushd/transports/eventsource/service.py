"""The EventSource transport as a service: its resource, its streams, their shutdown.

Built once by the daemon's wiring; the resource is mounted at ``/jmap/eventsource``.
Stopping the service refuses new streams and ends every open one, before the
listening ports close.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from jmappushd.context import App
from jmappushd.transports.eventsource.registry import StreamRegistry
from jmappushd.transports.eventsource.resource import TRANSPORT, EventSourceResource
from jmappushd.transports.interface import ITransportService

__all__ = ["EventSourceService"]


@implementer(ITransportService)
class EventSourceService(Service):
    """Owns the EventSource resource and the registry of its open streams."""

    name = TRANSPORT

    def __init__(self, app: App, clock: IReactorTime) -> None:
        self.registry = StreamRegistry(app.store)
        self.resource = EventSourceResource(app, clock, self.registry)
        app.auth.on_invalidate(self.registry.invalidate)
        app.metrics.track_listeners(TRANSPORT, lambda: self.registry.count)

    def when_started(self) -> defer.Deferred[None]:
        """Nothing to load: usable as soon as the core is."""
        return defer.succeed(None)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.registry.close_all()
        return defer.succeed(None)
