"""Writing JSON and problem-details responses, safely even after a disconnect."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import NOT_DONE_YET, Request

from jmappushd.jmap.ijson import dumps
from jmappushd.jmap.problems import PROBLEM_CONTENT_TYPE, RequestProblem
from jmappushd.net import _fastpath
from jmappushd.net.sendnow import send_now
from jmappushd.store.records import StoreClosed, StoreUnavailable

JSON_CONTENT_TYPE = b"application/json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


def is_gone(request: Request) -> bool:
    """True once the response is finished or the client went away."""
    return bool(request.finished or getattr(request, "_disconnected", False))


def write_body(request: Request, status: int, body: bytes, content_type: bytes) -> None:
    """Send a complete response unless the request is already over."""
    if is_gone(request):
        return
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    whole = _fastpath.whole_response(request, body)
    if whole is not None:
        send_now(*whole)  # the status line, headers and body in one send()
    else:
        request.write(body)
    request.finish()


def write_json(request: Request, status: int, value: Any) -> None:
    write_body(request, status, dumps(value), JSON_CONTENT_TYPE)


def problem_body(
    status: int, detail: str, type_: str = "about:blank", **extra: Any
) -> dict[str, Any]:
    """An RFC 7807 problem object for errors that are not JMAP request-level types."""
    body: dict[str, Any] = {
        "type": type_,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return body


def write_problem(request: Request, status: int, detail: str, **extra: Any) -> None:
    write_body(request, status, dumps(problem_body(status, detail, **extra)), PROBLEM_CONTENT_TYPE)


def close_connection_after(request: http.Request) -> None:
    """End the connection with this response (``Connection: close``).

    ES-3: with ``closeafter=state`` a client reading the body until the connection closes
    (sseclient, hence jmapc) would otherwise wait on a kept-alive connection forever; a
    throttled login costs its sender a new connection. HTTP/1.1 only: HTTP/2 forbids
    connection headers and ends just its stream.
    """
    channel = request.channel
    if isinstance(channel, http.HTTPChannel):
        request.setHeader(b"Connection", b"close")
        channel.persistent = False


def write_retry_later(request: Request, status: int, detail: str, retry_after: int) -> None:
    """A 429/503 problem with ``Retry-After`` in seconds (RFC 9110 §10.2.3)."""
    if not is_gone(request):
        request.setHeader(b"Retry-After", str(max(1, retry_after)).encode("ascii"))
    write_problem(request, status, detail, retryAfter=max(1, retry_after))


def write_request_problem(request: Request, problem: RequestProblem) -> None:
    write_body(request, problem.status, dumps(problem.to_json()), PROBLEM_CONTENT_TYPE)


def serve_async(
    request: Request,
    work: Coroutine[Any, Any, None],
    log: Logger,
    status: int = 500,
    detail: str = "internal error",
) -> object:
    """Run a resource's coroutine; an unexpected failure is logged and answered
    ``status`` (if nothing was written yet). Returns NOT_DONE_YET for ``render``.

    A store that is not open or not reachable (a database outage, a daemon still waiting
    for its database) is not the client's problem nor a bug: 503 with ``Retry-After`` and
    one log line. Anything else is logged with its traceback, once per request.
    """

    def failed(failure: Failure) -> None:
        if failure.check(StoreUnavailable, StoreClosed):
            log.warn("{method} {path}: the store is unavailable: {why}", method=request.method,
                     path=request.path, why=" ".join(failure.getErrorMessage().split())[:300])
            write_retry_later(request, 503, "the store is unavailable; retry shortly", 5)
            return
        log.failure("{method} {path} failed", failure,
                    method=request.method, path=request.path)
        write_problem(request, status, detail)

    defer.ensureDeferred(work).addErrback(failed)
    return NOT_DONE_YET
