"""The twisted.web Site used by both listeners: body limits and secret-free access logs.

Bodies larger than the limit are refused as soon as their size is known (from
``Content-Length``, or while a chunked body streams in), before they are
buffered, with the JMAP ``limit`` problem (API-21). The access log
(``accesslog``) is one line per request without the query string, so an
``access_token`` is never logged; a push session (EventSource, WebSocket) is
logged by its transport when it ends instead (:func:`log_as_session`).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from jmappushd.jmap.ijson import dumps
from jmappushd.jmap.problems import PROBLEM_CONTENT_TYPE, RequestProblem
from jmappushd.net._fastpath import raw_transport
from jmappushd.web.accesslog import AccessLog, Closed, SessionEntry
from jmappushd.web.clientaddr import ClientAddresses


class LimitedRequest(Request):
    """A Request that refuses oversized bodies before buffering them."""

    max_body: int = 10_000_000
    accesslog: AccessLog | None = None  # the site's, set on its request class
    logged_as_session = False  # a transport logs this request when its session ends

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._received = 0
        self._refused = False
        self.started = time.monotonic()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse()
        super().gotLength(0 if self._refused else length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        """Answer 400 ``limit``/``maxSizeRequest`` directly and drop the connection."""
        self._refused = True
        problem = RequestProblem(
            "limit",
            f"the request body exceeds maxSizeRequest ({self.max_body} octets)",
            limit="maxSizeRequest",
        )
        body = dumps(problem.to_json())
        head = (
            b"HTTP/1.1 400 Bad Request\r\n"
            b"Content-Type: " + PROBLEM_CONTENT_TYPE + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n"
        )
        transport = raw_transport(self)
        if transport is not None:
            transport.write(head + body)
            transport.loseConnection()


class JMAPSite(Site):
    """A Site with a per-site body limit and a structured access log."""

    def __init__(self, resource: IResource, max_body: int, name: str, access_log: bool = True,
                 clients: ClientAddresses | None = None, **kwargs: Any) -> None:
        self.accesslog = AccessLog(name, clients or ClientAddresses(), access_log)
        request_class = type("LimitedRequest", (LimitedRequest,),
                             {"max_body": max_body, "accesslog": self.accesslog})
        super().__init__(resource, requestFactory=request_class, **kwargs)
        self.displayTracebacks = False
        self.name = name
        self.noisy = False

    def log(self, request: http.Request) -> None:
        """Called by twisted.web when a response finishes."""
        if isinstance(request, LimitedRequest) and request.logged_as_session:
            return
        self.accesslog.request_done(request, getattr(request, "started", None))


def log_as_session(request: Request) -> bool:
    """From now on ``request`` is logged by its transport when the session ends (through
    :func:`stream_ended` or :func:`session_entry`), not when (or if) it finishes.

    False for a request of another Site (unit tests' plain ones): nothing is logged.
    """
    if isinstance(request, LimitedRequest) and request.accesslog is not None:
        request.logged_as_session = True
        return True
    return False


def stream_ended(request: Request, closed: Closed) -> None:
    """Log the end of a streamed response marked with :func:`log_as_session` (call once)."""
    if isinstance(request, LimitedRequest) and request.logged_as_session:
        assert request.accesslog is not None
        request.accesslog.stream_done(request, request.started, closed)


def session_entry(request: Request) -> SessionEntry | None:
    """Mark an upgraded request (:func:`log_as_session`) and return what logs its end."""
    if not log_as_session(request):
        return None
    assert isinstance(request, LimitedRequest) and request.accesslog is not None
    return request.accesslog.session(request, request.started)
