"""The session resource, its ``/.well-known/jmap`` redirect, and the blob stubs."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from jmappushd.context import App
from jmappushd.web.base import AppResource
from jmappushd.web.responses import serve_async, write_json, write_problem


class SessionResource(AppResource):
    """``GET /jmap/session``: the Session object for the authenticated user (SES-4)."""

    cors_methods = (b"GET",)

    def render_GET(self, request: Request) -> Any:
        return serve_async(request, self._handle(request), self.log)

    async def _handle(self, request: Request) -> None:
        app = self._app
        principal = await self.authenticated(request, "session")
        if principal is None:
            return
        # SES-13: never cache the session.
        request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
        app.metrics.http_requests.labels("session", "200").inc()
        write_json(request, 200, app.session_for(principal))


class WellKnownRedirect(Resource):
    """``/.well-known/jmap`` → 307 to the session (SES-2, C-SES-1); needs no auth."""

    isLeaf = True
    cors_methods = (b"GET",)

    def __init__(self, location: str) -> None:
        super().__init__()
        self._location = location.encode("utf-8")

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"Location", self._location)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"See the JMAP session resource at " + self._location + b"\n"

    render_HEAD = render_GET


class NotSupportedResource(AppResource):
    """Upload and download URLs exist in the session but this daemon stores no blobs."""

    def __init__(self, app: App, what: str, method: bytes) -> None:
        super().__init__(app)
        self._what = what
        self.cors_methods = (method,)

    def render(self, request: Request) -> Any:
        return serve_async(request, self._handle(request), self.log)

    async def _handle(self, request: Request) -> None:
        if await self.authenticated(request, self._what) is None:
            return
        write_problem(request, 501, f"{self._what} is not supported by this push daemon")


class NotFoundResource(Resource):
    """A JSON 404 for every unknown path."""

    isLeaf = True

    def render(self, request: Request) -> int:
        write_problem(request, 404, "no such resource")
        return NOT_DONE_YET
