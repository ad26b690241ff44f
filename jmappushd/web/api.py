"""The JMAP API endpoint (RFC 8620 §3): POST a Request, get a Response.

The resource only frames and authenticates; validation and dispatch live in the
shared :class:`~jmappushd.jmap.processor.RequestProcessor`, which the WebSocket
transport uses unchanged, and so does the bound on the Response's size
(``max-size-response``). The in-flight count per user is ``App.inflight``, which every
WebSocket shares.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import NOT_DONE_YET, Request

from jmappushd.context import App
from jmappushd.jmap.ijson import loads
from jmappushd.jmap.problems import RequestProblem
from jmappushd.web.base import AppResource
from jmappushd.web.responses import (
    JSON_CONTENT_TYPE,
    serve_async,
    write_body,
    write_problem,
    write_request_problem,
)


def is_json_content_type(value: bytes | None) -> bool:
    """``application/json``, parameters allowed (C-API-2)."""
    if value is None:
        return False
    media = value.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class APIResource(AppResource):
    """``POST {apiUrl}``."""

    cors_methods = (b"POST",)

    def __init__(self, app: App) -> None:
        super().__init__(app)
        # Shared with every WebSocket: one count per user (API-21, WS-15).
        self._inflight = app.inflight

    def render_POST(self, request: Request) -> Any:
        return serve_async(request, self._handle(request), self.log)

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"Allow", b"POST")
        write_problem(request, 405, "the API endpoint only accepts POST")
        return NOT_DONE_YET

    render_PUT = render_DELETE = render_PATCH = render_GET

    async def _handle(self, request: Request) -> None:
        app = self._app
        principal = await self.authenticated(request, "api")
        if principal is None:
            return
        try:
            body = self._parse(request)
        except RequestProblem as problem:
            self._problem(request, problem)
            return
        if not self._inflight.acquire(principal.user_id):
            self._problem(request, RequestProblem(
                "limit",
                f"more than {self._inflight.limit} concurrent requests",
                limit="maxConcurrentRequests",
            ))
            return
        try:
            response = await app.processor.process(body, principal,
                                                   app.session_state(principal))
        except RequestProblem as problem:
            self._problem(request, problem)
            return
        finally:
            self._inflight.release(principal.user_id)
        app.metrics.http_requests.labels("api", "200").inc()
        write_body(request, 200, response.encode(), JSON_CONTENT_TYPE)

    def _parse(self, request: Request) -> Any:
        if not is_json_content_type(request.getHeader(b"Content-Type")):
            raise RequestProblem("notJSON", "the Content-Type must be application/json")
        assert request.content is not None
        data = request.content.read()
        limit = self._app.config.jmap.max_size_request
        if len(data) > limit:
            raise RequestProblem(
                "limit", f"the request exceeds maxSizeRequest ({limit} octets)",
                limit="maxSizeRequest",
            )
        return loads(data)

    def _problem(self, request: Request, problem: RequestProblem) -> None:
        self._app.metrics.api_errors.labels(problem.kind).inc()
        self._app.metrics.http_requests.labels("api", str(problem.status)).inc()
        write_request_problem(request, problem)
