"""The twisted.web Site used by both listeners: body limits and secret-free access logs.

Bodies larger than the limit are refused as soon as their size is known (from
``Content-Length``, or while a chunked body streams in), before they are
buffered, with the JMAP ``limit`` problem (API-21). The access log is one line
per request without the query string, so an ``access_token`` is never logged.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from jmappushd.jmap.ijson import dumps
from jmappushd.jmap.problems import PROBLEM_CONTENT_TYPE, RequestProblem
from jmappushd.net._fastpath import raw_transport


class LimitedRequest(Request):
    """A Request that refuses oversized bodies before buffering them."""

    max_body: int = 10_000_000

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

    access_log = Logger(namespace="jmappushd.access")

    def __init__(self, resource: IResource, max_body: int, name: str, access_log: bool = True,
                 **kwargs: Any) -> None:
        request_class = type("LimitedRequest", (LimitedRequest,), {"max_body": max_body})
        super().__init__(resource, requestFactory=request_class, **kwargs)
        self.displayTracebacks = False
        self.name = name
        self.noisy = False
        self.access_log_enabled = access_log

    def log(self, request: http.Request) -> None:
        if not self.access_log_enabled:
            return
        path = (request.path or b"").decode("utf-8", "replace")
        started = getattr(request, "started", None)
        duration = (time.monotonic() - started) * 1000 if started is not None else 0.0
        client = request.getClientAddress()
        self.access_log.info(
            "{site} {client} {method} {path} {status} {length} {duration_ms:.1f}ms",
            site=self.name,
            client=getattr(client, "host", "-"),
            method=(request.method or b"-").decode("ascii", "replace"),
            path=path,
            status=request.code,
            length=request.sentLength,
            duration_ms=duration,
        )
