"""The WebSocket factory: Autobahn options, the live connections, and their shared policy.

It knows every connection (per user, for the connection limit), hands the
principal authenticated by the handshake resource to the protocol it builds,
re-checks credentials when the auth layer says they may have been revoked
(C-WS-5), encodes each change once per distinct view for fan-out, and closes
everything with 1001 at shutdown.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request

from jmappushd.auth.authenticator import TOKEN_CREDENTIAL, Principal
from jmappushd.core.hub import Change, restrict
from jmappushd.daemon.context import App
from jmappushd.transports.websocket.frames import state_change_frame
from jmappushd.transports.websocket.messages import SUBPROTOCOL
from jmappushd.transports.websocket.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    JMAPWebSocketProtocol,
)
from jmappushd.transports.websocket.push import Payload

HARD_CAP_FACTOR = 2
"""Messages above ``HARD_CAP_FACTOR`` x maxSizeRequest are refused by Autobahn (1009)."""


class JMAPWebSocketFactory(WebSocketServerFactory):  # type: ignore[misc]
    """Builds one :class:`JMAPWebSocketProtocol` per authenticated upgrade."""

    protocol = JMAPWebSocketProtocol  # type: ignore[assignment]
    _log = Logger()

    def __init__(self, app: App, reactor: Any) -> None:
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
        self.max_concurrent = app.config.jmap.max_concurrent_requests
        self.services = {"app": app}
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
        self.connections: dict[JMAPWebSocketProtocol, None] = {}
        self._per_user: dict[str, int] = {}
        self._pending: Principal | None = None
        self._drained: defer.Deferred[None] | None = None
        self._cache_seq = -1
        self._cache: dict[tuple[frozenset[str], frozenset[str] | None], Payload | None] = {}
        self.stopping = False

    # -- connections --

    def connections_of(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)

    def upgrade(self, ws_resource: Any, request: Request, principal: Principal) -> Any:
        """Let Autobahn take the request over; the protocol it builds gets ``principal``."""
        self._pending = principal
        try:
            return ws_resource.render(request)
        finally:
            self._pending = None

    def buildProtocol(self, addr: Any) -> JMAPWebSocketProtocol | None:  # type: ignore[override]
        principal = self._pending
        if principal is None or self.stopping:
            return None
        self._pending = None
        proto = super().buildProtocol(addr)
        assert isinstance(proto, JMAPWebSocketProtocol)
        proto.principal = principal
        self.connections[proto] = None
        self._per_user[principal.user_id] = self._per_user.get(principal.user_id, 0) + 1
        return proto

    def forget(self, proto: JMAPWebSocketProtocol) -> None:
        """The connection is gone: drop it from the registry (idempotent)."""
        if proto in self.connections:
            del self.connections[proto]
            assert proto.principal is not None
            user_id = proto.principal.user_id
            left = self._per_user[user_id] - 1
            if left:
                self._per_user[user_id] = left
            else:
                del self._per_user[user_id]
        if not self.connections and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def count_error(self, kind: str) -> None:
        self.app.metrics.api_errors.labels(kind).inc()

    # -- fan-out --

    def payload_for(self, change: Change, account_ids: frozenset[str],
                    types: frozenset[str] | None) -> Payload | None:
        """Restrict, encode and frame ``change`` once per (accounts, types) view."""
        if change.seq != self._cache_seq:
            self._cache.clear()
            self._cache_seq = change.seq
        key = (account_ids, types)
        try:
            return self._cache[key]
        except KeyError:
            pass
        restricted = restrict(change.changed, account_ids, types)
        found = None
        if restricted:
            found = (restricted, state_change_frame(restricted, change.token))
        if len(self._cache) < 4096:
            self._cache[key] = found
        return found

    # -- credentials (C-WS-5) and shutdown --

    def credentials_changed(self) -> None:
        """Auth callback: re-check every connected user's credentials and grants."""
        if self.connections and not self.stopping:
            d = defer.ensureDeferred(self._recheck())
            d.addErrback(lambda f: self._log.failure("WebSocket credential re-check failed", f))

    async def _recheck(self) -> None:
        by_user: dict[str, list[JMAPWebSocketProtocol]] = defaultdict(list)
        for proto in self.connections:
            if proto.principal is not None:
                by_user[proto.principal.user_id].append(proto)
        store = self.app.store
        for user_id, protos in by_user.items():
            user = await store.get_user_by_id(user_id)
            if user is None:
                for proto in protos:
                    proto.close(CLOSE_POLICY_VIOLATION, "credentials revoked")  # C-WS-5
                continue
            token_ids = {TOKEN_CREDENTIAL + t.id for t in await store.list_tokens(user.name)}
            accounts = tuple(await store.accounts_for_user(user_id))
            for proto in protos:
                principal = proto.principal
                if principal is None or proto not in self.connections:
                    continue  # gone while the store was asked
                if (principal.credential_id.startswith(TOKEN_CREDENTIAL)
                        and principal.credential_id not in token_ids):
                    proto.close(CLOSE_POLICY_VIOLATION, "credentials revoked")
                elif {a.id for a in accounts} != principal.account_ids:
                    proto.refresh(dataclasses.replace(principal, accounts=accounts))

    async def shutdown(self) -> None:
        """Close every connection with 1001 and wait until they are gone (bounded)."""
        self.stopping = True
        for proto in list(self.connections):
            proto.close(CLOSE_GOING_AWAY, "server shutting down")
        if self.connections:
            self._drained = defer.Deferred()
            await self._drained
