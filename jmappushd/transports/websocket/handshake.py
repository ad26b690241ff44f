"""``GET /jmap/ws``: vet and authenticate the upgrade, then hand it to Autobahn.

Everything that can refuse a handshake answers with a plain HTTP problem
response before any upgrade: a foreign ``Origin`` (403, WS-21), no ``jmap``
subprotocol offered (400, C-WS-1), missing or bad credentials (401 with
``WWW-Authenticate``, WS-4), a throttled or over-busy login (429/503 with
``Retry-After``), too many connections for the user (429). Only then
does Autobahn's :class:`WebSocketResource` take the transport over.

Over HTTP/2 the handshake is an extended CONNECT (RFC 8441) and the same checks
answer the same codes as HTTP/2 responses (plus ``sec-websocket-version: 13``,
which Autobahn checks over HTTP/1.1); an accepted one gets ``:status 200`` and its
stream runs the session (``h2session``). A plain GET over HTTP/2 gets 405
(``Allow: CONNECT``): it cannot upgrade.

The resource is a leaf, so Twisted hands it every path below its own too
(``/jmap/ws/extra``, and ``/.well-known/jmap/x`` through the well-known directory);
only the exact path is the endpoint, anything below it is the JSON 404 of an unknown
path, over either protocol.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from jmappushd.context import App
from jmappushd.transports.websocket import h2session
from jmappushd.transports.websocket.factory import JMAPWebSocketFactory
from jmappushd.transports.websocket.messages import SUBPROTOCOL
from jmappushd.web import h2connect
from jmappushd.web.http2 import is_h2_stream
from jmappushd.web.httpauth import authenticate
from jmappushd.web.responses import is_gone, write_problem

WEBSOCKET_VERSION = b"13"
"""The only version of RFC 6455 (checked by Autobahn over HTTP/1.1, here over HTTP/2)."""


def _tokens(request: Request, name: bytes) -> list[str]:
    """The comma-separated tokens of every ``name`` header, lower-cased."""
    values = request.requestHeaders.getRawHeaders(name) or []
    return [t.strip().lower() for v in values for t in v.decode("latin-1").split(",")]


class HandshakeResource(Resource):
    """Authenticating front of Autobahn's WebSocketResource."""

    isLeaf = True
    log = Logger()

    def __init__(self, app: App, factory: JMAPWebSocketFactory) -> None:
        super().__init__()
        self._app = app
        self._factory = factory
        self._ws = WebSocketResource(factory)
        self._origins = frozenset(app.config.websocket.allowed_origins)

    def render(self, request: Request) -> Any:
        if request.postpath:  # below the endpoint (even a bare trailing "/")
            write_problem(request, 404, "no such resource")
            self._count(request)
            return NOT_DONE_YET
        refused = self._refused_h2 if is_h2_stream(request.channel) else self._refused
        if refused(request):
            self._count(request)
            return NOT_DONE_YET
        d = defer.ensureDeferred(self._upgrade(request))
        d.addErrback(self._crashed, request)
        return NOT_DONE_YET

    def _refused(self, request: Request) -> bool:
        """Answer the checks that need no credentials; True when one refused."""
        if request.method != b"GET":
            request.setHeader(b"Allow", b"GET")
            write_problem(request, 405, "the WebSocket endpoint only accepts GET")
        elif "websocket" not in _tokens(request, b"Upgrade"):
            request.setHeader(b"Upgrade", b"websocket")
            write_problem(request, 426, "this is the JMAP WebSocket endpoint (RFC 8887)")
        elif not self._origin_allowed(request):
            write_problem(request, 403, "this Origin may not open JMAP WebSockets")
        elif SUBPROTOCOL not in _tokens(request, b"Sec-WebSocket-Protocol"):
            write_problem(request, 400, "the client must offer the 'jmap' subprotocol")
        else:
            return False
        return True

    def _refused_h2(self, request: Request) -> bool:
        """The same checks for an HTTP/2 request (RFC 8441 §5); True when one refused."""
        if h2connect.connect_protocol(request) != h2connect.WEBSOCKET:
            request.setHeader(b"Allow", b"CONNECT")
            write_problem(request, 405, "over HTTP/2 the JMAP WebSocket is opened with an "
                          "extended CONNECT (RFC 8441)")
        elif request.getHeader(b"Sec-WebSocket-Version") != WEBSOCKET_VERSION:
            request.setHeader(b"Sec-WebSocket-Version", WEBSOCKET_VERSION)
            write_problem(request, 400, "only WebSocket version 13 is supported")
        elif not self._origin_allowed(request):
            write_problem(request, 403, "this Origin may not open JMAP WebSockets")
        elif SUBPROTOCOL not in _tokens(request, b"Sec-WebSocket-Protocol"):
            write_problem(request, 400, "the client must offer the 'jmap' subprotocol")
        else:
            return False
        return True

    def _origin_allowed(self, request: Request) -> bool:
        origin = request.getHeader(b"Origin")
        if not self._origins or origin is None:
            return True  # empty allow-list = any; non-browser clients send no Origin
        return origin.decode("latin-1").strip().lower() in self._origins

    async def _upgrade(self, request: Request) -> None:
        app = self._app
        principal = await authenticate(app, request, app.config.auth.allow_access_token)
        if principal is None:
            self._count(request)
            return
        factory = self._factory
        password_fp = await factory.registry.password_fingerprint_for(principal)
        if is_gone(request):
            return
        if factory.stopping:
            write_problem(request, 503, "the server is shutting down")
        elif factory.connections_of(principal.user_id) >= factory.max_per_user:
            write_problem(request, 429, "too many WebSocket connections for this user",
                          limit=factory.max_per_user)
        elif h2connect.is_connect_stream(request):
            h2session.accept(factory, request, principal, password_fp)
            self._count(request, "connect")  # the 200 of RFC 8441, the label says h2
            return
        else:
            result = factory.upgrade(self._ws, request, principal, password_fp)
            if isinstance(result, bytes):  # Autobahn refused (e.g. HTTP/2): finish its page
                request.write(result)
                request.finish()
            self._count(request, "upgrade")
            return
        self._count(request)

    def _count(self, request: Request, status: str | None = None) -> None:
        code = status if status is not None else str(request.code)
        self._app.metrics.http_requests.labels("websocket", code).inc()

    def _crashed(self, failure: Failure, request: Request) -> None:
        self.log.failure("WebSocket handshake crashed", failure)
        write_problem(request, 500, "internal error")
