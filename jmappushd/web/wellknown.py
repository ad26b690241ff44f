"""``/.well-known/jmap`` for both HTTP and WebSocket clients (RFC 8307).

RFC 8307 makes ``/.well-known/`` URIs valid for ``ws:`` and ``wss:``, so a WebSocket
client given ``wss://host/.well-known/jmap`` opens its RFC 8887 handshake there.
Every WebSocket client refuses a redirect, so that handshake is handed straight to
the very resource behind ``/jmap/ws`` (same authentication, Origin check, limits and
session), outside the CORS gate like ``/jmap/ws`` itself; every other request (a
plain GET, a preflight) keeps going through the gate to the 307 to the session.
"""

from __future__ import annotations

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

#: The registered well-known suffix (RFC 8620 §9.2).
JMAP_SUFFIX = b"jmap"


def is_websocket_handshake(request: Request) -> bool:
    """An HTTP/1.1 ``Upgrade: websocket`` or an HTTP/2 extended CONNECT (RFC 8441)."""
    if request.method == b"CONNECT":
        return True
    values = request.requestHeaders.getRawHeaders(b"Upgrade") or []
    return any(t.strip().lower() == b"websocket" for v in values for t in v.split(b","))


class WellKnownDirectory(Resource):
    """``/.well-known/``: the WebSocket handshake at ``jmap`` bypasses ``http``."""

    def __init__(self, http: IResource, websocket: IResource | None) -> None:
        super().__init__()
        self._http = http
        self._websocket = websocket

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if (path == JMAP_SUFFIX and self._websocket is not None
                and is_websocket_handshake(request)):
            return self._websocket
        child: IResource = self._http.getChildWithDefault(path, request)
        return child

    def render(self, request: Request) -> object:
        return self._http.render(request)
