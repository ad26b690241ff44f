"""Bare twisted.web SSE baseline: hold each GET open with NOT_DONE_YET, write given bytes.

No authentication, no hub, no timers, no per-connection objects beyond the
Request twisted.web makes anyway: the floor a daemon connection is compared to.
It writes the same opening comment as jmappushd, so the response is the same size.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

OPEN_COMMENT = b": jmap event stream\n\n"


class BareEventSource(Resource):
    """``GET /events``: a text/event-stream response that stays open."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[Request, None] = {}

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.write(OPEN_COMMENT)
        self.requests[request] = None
        request.notifyFinish().addBoth(lambda _: self.requests.pop(request, None))
        return NOT_DONE_YET

    def broadcast(self, data: bytes) -> None:
        for request in self.requests:
            request.write(data)
