"""What the daemon's wiring expects of a transport service."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from zope.interface import Interface


class IStarted(Interface):
    """Something whose start-up others wait for (the core service: store and hub)."""

    def when_started() -> Deferred[None]:
        """Fires once it is usable, or fails with the reason it is not."""


class ITransportService(IService):
    """A transport (EventSource, WebSocket, Web Push) as a child of the daemon.

    Built with typed arguments by :func:`jmappushd.daemon.service.build_service`;
    ``stopService`` ends the transport's connections (or records what it owes)
    before the listening ports close.
    """

    def when_started() -> Deferred[None]:
        """Fires once the transport is complete (e.g. Web Push has loaded its key)."""
