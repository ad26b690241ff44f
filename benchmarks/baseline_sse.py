"""Bare twisted.web SSE baseline: hold each GET open with NOT_DONE_YET, write given bytes.

No authentication, no hub, no timers, no per-connection objects beyond the
Request twisted.web makes anyway: the floor a daemon connection is compared to.
With ``routes`` (Authorization value -> account), each stream is also filed under
its account so a publish can reach exactly the streams of the accounts it names.
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

    def __init__(self, routes: dict[str, str] | None = None) -> None:
        super().__init__()
        self.requests: dict[Request, None] = {}
        self.routes = routes or {}
        self.by_account: dict[str, dict[Request, None]] = {}

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.write(OPEN_COMMENT)
        self.requests[request] = None
        account = self.routes.get((request.getHeader(b"Authorization") or b"").decode())
        if account is not None:
            self.by_account.setdefault(account, {})[request] = None
        request.notifyFinish().addBoth(lambda _: self._gone(request, account))
        return NOT_DONE_YET

    def _gone(self, request: Request, account: str | None) -> None:
        self.requests.pop(request, None)
        if account is not None:
            self.by_account.get(account, {}).pop(request, None)

    def broadcast(self, data: bytes) -> None:
        for request in self.requests:
            request.write(data)

    def send_to(self, account: str, data: bytes) -> None:
        for request in self.by_account.get(account, ()):
            request.write(data)
