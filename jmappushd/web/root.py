"""Assembling the JMAP resource tree in one place."""

from __future__ import annotations

from collections.abc import Mapping

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from jmappushd.context import App
from jmappushd.web.api import APIResource
from jmappushd.web.discovery import (
    NotFoundResource,
    NotSupportedResource,
    SessionResource,
    WellKnownRedirect,
)


class Directory(Resource):
    """A container whose unknown children answer a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return NotFoundResource()

    def render(self, request: Request) -> int:
        return NotFoundResource().render(request)


def build_root(app: App, jmap_children: Mapping[bytes, IResource] | None = None) -> Resource:
    """``/.well-known/jmap`` and ``/jmap/...``; transports add children under ``/jmap``."""
    root = Directory()
    well_known = Directory()
    well_known.putChild(b"jmap", WellKnownRedirect(app.urls.session))
    root.putChild(b".well-known", well_known)
    jmap = Directory()
    jmap.putChild(b"session", SessionResource(app))
    jmap.putChild(b"api", APIResource(app))
    jmap.putChild(b"upload", NotSupportedResource(app, "upload"))
    jmap.putChild(b"download", NotSupportedResource(app, "download"))
    for name, child in (jmap_children or {}).items():
        jmap.putChild(name, child)
    root.putChild(b"jmap", jmap)
    return root
