"""JMAP over WebSocket (RFC 8887) as a service of the daemon.

It builds the Autobahn factory and the handshake resource mounted at ``/jmap/ws`` in
the JMAP site (same listeners, same TLS), advertises
``urn:ietf:params:jmap:websocket`` in the session (SES-14, WS-1), starts the factory
(a twisted.web Site does not start or stop a factory behind a WebSocketResource),
re-checks live connections when credentials may have been revoked, and at shutdown
closes every connection with 1001 before the listening ports close.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from zope.interface import implementer

from jmappushd.context import App
from jmappushd.reactor import IDaemonReactor
from jmappushd.transports.interface import ITransportService
from jmappushd.transports.websocket.factory import JMAPWebSocketFactory
from jmappushd.transports.websocket.handshake import HandshakeResource
from jmappushd.transports.websocket.messages import WEBSOCKET_CAPABILITY

__all__ = ["WEBSOCKET_CAPABILITY", "WebSocketService"]

TRANSPORT = "websocket"


@implementer(ITransportService)
class WebSocketService(Service):
    """Owns the factory of live connections and the handshake resource."""

    name = TRANSPORT

    def __init__(self, app: App, reactor: IDaemonReactor) -> None:
        self.factory = JMAPWebSocketFactory(app, reactor=reactor)
        self.resource = HandshakeResource(app, self.factory)
        app.registry.add_capability(
            WEBSOCKET_CAPABILITY, {"url": app.urls.websocket, "supportsPush": True})
        app.auth.on_invalidate(self.factory.registry.invalidate)
        app.metrics.track_listeners(TRANSPORT, lambda: self.factory.registry.count)

    def startService(self) -> None:
        super().startService()
        self.factory.doStart()

    def when_started(self) -> defer.Deferred[None]:
        """Nothing to load: usable as soon as the core is."""
        return defer.succeed(None)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.factory.shutdown()
        self.factory.doStop()
