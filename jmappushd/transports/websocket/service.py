"""JMAP over WebSocket (RFC 8887): the entry point the service calls.

:func:`install` mounts the handshake resource at ``/jmap/ws`` in the JMAP site
(same listeners, same TLS), advertises ``urn:ietf:params:jmap:websocket`` in the
session (SES-14, WS-1), starts the Autobahn factory (a twisted.web Site does not
start or stop a factory behind a WebSocketResource), re-checks live connections
when credentials may have been revoked, and at shutdown closes every connection
with 1001 and then stops the factory.
"""

from __future__ import annotations

from typing import Any

from jmappushd.transports.websocket.factory import JMAPWebSocketFactory
from jmappushd.transports.websocket.handshake import HandshakeResource
from jmappushd.transports.websocket.messages import WEBSOCKET_CAPABILITY

__all__ = ["WEBSOCKET_CAPABILITY", "install"]


def install(service: Any) -> None:
    """Add the WebSocket endpoint, its capability and its shutdown hook to ``service``."""
    app = service.app
    factory = JMAPWebSocketFactory(app, reactor=service._reactor)
    service.jmap_children[b"ws"] = HandshakeResource(app, factory)
    app.registry.add_capability(
        WEBSOCKET_CAPABILITY, {"url": app.urls.websocket, "supportsPush": True})
    app.services["websocket"] = factory
    app.auth.on_invalidate(factory.credentials_changed)
    app.metrics.track_listeners("websocket", lambda: factory.registry.count)
    factory.doStart()

    async def shutdown() -> None:
        await factory.shutdown()
        factory.doStop()

    service.shutdown_hooks.append(shutdown)
