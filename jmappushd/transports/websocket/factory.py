"""The WebSocket factory: Autobahn options, the live connections, and their shared policy.

It knows every connection through the shared
:class:`~jmappushd.core.connections.ConnectionRegistry` (per user, for the
connection limit; the one revalidation policy closes revoked connections with
1008, C-WS-5 — a removed user, a revoked token, and now also a changed
password — and makes the others follow new grants), attaches a
:class:`~jmappushd.transports.websocket.conversation.Conversation` with the principal
authenticated by the handshake resource to the protocol it builds, shares one
per-view cache (each change encoded once per view for fan-out), and closes
everything with 1001 at shutdown.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.web.server import Request

from jmappushd.auth.authenticator import Principal
from jmappushd.context import App
from jmappushd.core.connections import ConnectionRegistry
from jmappushd.core.feed import FeedContext
from jmappushd.transports.websocket.conversation import Conversation, ConversationContext
from jmappushd.transports.websocket.h2session import H2WebSocket
from jmappushd.transports.websocket.messages import SUBPROTOCOL
from jmappushd.transports.websocket.protocol import JMAPWebSocketProtocol
from jmappushd.transports.websocket.push import push_views
from jmappushd.web.site import session_entry

HARD_CAP_FACTOR = 2
"""Messages above ``HARD_CAP_FACTOR`` x maxSizeRequest are refused by Autobahn (1009)."""


class JMAPWebSocketFactory(WebSocketServerFactory):
    """Builds one :class:`JMAPWebSocketProtocol` per authenticated upgrade."""

    # Autobahn subclasses Twisted's generic Factory without a type argument, so mypy
    # sees an unsolved protocol type here and in buildProtocol.
    protocol = JMAPWebSocketProtocol  # type: ignore[assignment]

    def __init__(self, app: App, reactor: IReactorTime) -> None:
        # Autobahn keeps the reactor only for listenWS/connectWS, which we do not use;
        # its timers run on txaio's loop (see the protocol options below).
        super().__init__(url=app.urls.websocket, protocols=[SUBPROTOCOL], server=None,
                         reactor=reactor)
        ws = app.config.websocket
        self.app = app
        self.clock = app.clock
        self.heartbeat = float(ws.ws_heartbeat_interval)  # seconds
        self.client_timeout = float(ws.ws_client_timeout)  # seconds
        self.throttle_s = ws.ws_throttle_s  # configured in milliseconds
        self.max_per_user = ws.max_connections_per_user
        self.max_size_request = app.config.jmap.max_size_request
        self.events_sent = app.metrics.events_sent.labels("websocket")
        cap = HARD_CAP_FACTOR * self.max_size_request
        self.max_frame_payload = cap
        self.setProtocolOptions(
            webStatus=False,
            maxFramePayloadSize=cap,  # WS-22, C-WS-4: beyond the cap Autobahn closes 1009
            maxMessagePayloadSize=cap,
            failByDrop=False,  # send the close code (1007, 1009) instead of dropping TCP
            openHandshakeTimeout=0,  # these run on txaio's loop; our clock drives ours
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            allowNullOrigin=True,  # Origin is checked by the handshake resource (WS-21)
        )
        # HTTP/1.1 upgrades and HTTP/2 streams (RFC 8441) share the per-user limit.
        self.registry: ConnectionRegistry[JMAPWebSocketProtocol | H2WebSocket] = (
            ConnectionRegistry(app.store, "WebSocket"))
        self.conversation_context = ConversationContext(
            processor=app.processor, session_state=app.session_state,
            max_size_request=self.max_size_request, in_flight=app.inflight,
            feeds=FeedContext(app.clock, app.hub, self.throttle_s, push_views()),
            events_sent=self.events_sent, count_error=self.count_error)
        self._pending: tuple[Principal, bytes | None, Request] | None = None

    # -- connections --

    @property
    def stopping(self) -> bool:
        return self.registry.closing

    @property
    def connections(self) -> list[JMAPWebSocketProtocol | H2WebSocket]:
        return self.registry.members()

    def connections_of(self, user_id: str) -> int:
        return self.registry.count_for(user_id)

    def upgrade(self, ws_resource: Any, request: Request, principal: Principal,
                password_fp: bytes | None = None) -> Any:
        """Let Autobahn take the request over; the protocol it builds gets ``principal``
        (and ``password_fp``, the registry's fingerprint of a password login)."""
        self._pending = (principal, password_fp, request)
        try:
            return ws_resource.render(request)
        finally:
            self._pending = None

    def buildProtocol(self, addr: IAddress) -> JMAPWebSocketProtocol | None:  # type: ignore[override]
        pending = self._pending
        if pending is None or self.stopping:
            return None
        self._pending = None
        principal, password_fp, request = pending
        proto = super().buildProtocol(addr)
        assert isinstance(proto, JMAPWebSocketProtocol)
        proto.conversation = Conversation(self.conversation_context, proto, principal)
        # The upgraded request never finishes: the connection logs its own end.
        proto.access = session_entry(request)
        self.registry.add(proto, password_fp)
        if password_fp is None:
            self.registry.remember_password(proto)
        return proto

    def forget(self, proto: JMAPWebSocketProtocol) -> None:
        """The connection is gone: drop it from the registry (idempotent)."""
        if proto.conversation is not None:
            self.registry.discard(proto)

    def count_error(self, kind: str) -> None:
        self.app.metrics.api_errors.labels(kind).inc()

    # -- shutdown (credential changes go straight to the registry, C-WS-5) --

    async def shutdown(self) -> None:
        """Close every connection with 1001 and wait until they are gone (bounded)."""
        self.registry.close_all()
        await self.registry.when_empty()
