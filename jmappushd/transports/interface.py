"""What the daemon's wiring expects of a transport service."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet.defer import Deferred


class ITransportService(IService):
    """A transport (EventSource, WebSocket, Web Push) as a child of the daemon.

    Built with typed arguments by :func:`jmappushd.daemon.service.build_service`;
    ``stopService`` ends the transport's connections (or records what it owes)
    before the listening ports close.
    """

    def when_started() -> Deferred[None]:
        """Fires once the transport is complete (e.g. Web Push has loaded its key)."""
