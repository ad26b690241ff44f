"""Assembling the JMAP resource tree in one place.

Every JMAP endpoint (``/.well-known/jmap`` and everything under ``/jmap`` but the
WebSocket handshake, which checks Origin itself and is also reachable at
``/.well-known/jmap``, RFC 8307) sits behind one
:class:`~jmappushd.web.cors.CorsGate` built from ``[server] cors-origins``. The demo
page, when configured, is mounted at ``/demo`` outside it: it is same-origin only.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from jmappushd.context import App
from jmappushd.web.api import APIResource
from jmappushd.web.cors import CorsGate, CorsPolicy
from jmappushd.web.discovery import (
    NotFoundResource,
    NotSupportedResource,
    SessionResource,
    WellKnownRedirect,
)
from jmappushd.web.wellknown import WellKnownDirectory

#: The child of ``/jmap`` that is not behind the CORS gate (RFC 6455 Origin check).
WEBSOCKET_CHILD = b"ws"


class Directory(Resource):
    """A container whose unknown children answer a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return NotFoundResource()

    def render(self, request: Request) -> int:
        return NotFoundResource().render(request)


def build_root(app: App, jmap_children: Mapping[bytes, IResource] | None = None,
               demo: IResource | None = None) -> Resource:
    """``/.well-known/jmap`` and ``/jmap/...``; transports add children under ``/jmap``."""
    cors = CorsPolicy(app.config.server.cors_origins)
    root = Directory()
    well_known = Directory()
    well_known.putChild(b"jmap", WellKnownRedirect(app.urls.session))
    children = jmap_children or {}
    # RFC 8307: the WebSocket handshake is also accepted at /.well-known/jmap.
    root.putChild(b".well-known", WellKnownDirectory(CorsGate(cors, well_known),
                                                     children.get(WEBSOCKET_CHILD)))
    jmap = Directory()
    jmap.putChild(b"session", SessionResource(app))
    jmap.putChild(b"api", APIResource(app))
    jmap.putChild(b"upload", NotSupportedResource(app, "upload", b"POST"))
    jmap.putChild(b"download", NotSupportedResource(app, "download", b"GET"))
    for name, child in children.items():
        jmap.putChild(name, child)
    root.putChild(b"jmap", CorsGate(cors, jmap, exempt=(WEBSOCKET_CHILD,)))
    if demo is not None:
        root.putChild(b"demo", demo)
    return root
