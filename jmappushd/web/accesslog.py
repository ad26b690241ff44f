"""The access log: one line per HTTP request, and one per push session when it ends.

A line names the site, the client address (through trusted proxies, see ``clientaddr``),
the method, the path, the status, the octets sent and the duration. The query string is
never logged (an ``access_token`` may be in it), nor any header but the forwarding ones
the client address comes from.

An EventSource stream or a WebSocket is one session: twisted.web logs a request only
when the response finishes, which a stream the client closed never does and an upgraded
WebSocket never reaches, so the transports end their session here instead, however it
ends, with ``closed=client|server|timeout``.
"""

from __future__ import annotations

import time
from typing import Literal

from twisted.logger import Logger
from twisted.web import http

from jmappushd.web.clientaddr import ClientAddresses

Closed = Literal["client", "server", "timeout"]
"""Who ended a session: the client, the server (shutdown, revoked credentials, closeafter,
a protocol error), or the server because the client stopped answering."""

ACCESS_LOG = Logger(namespace="jmappushd.access")
"""Every site's lines, under one namespace operators can route or filter on. (A Logger
that is a class attribute would take the class's name as its namespace instead.)"""

_REQUEST = "{site} {client} {method} {path} {status} {length} {duration_ms:.1f}ms"
_SESSION = _REQUEST + " closed={closed}"


def _path(request: http.Request) -> str:
    return (request.path or b"").decode("utf-8", "replace")


def _method(request: http.Request) -> str:
    return (request.method or b"-").decode("ascii", "replace")


class AccessLog:
    """The access log of one site (``jmap`` or ``admin``)."""

    def __init__(self, site: str, clients: ClientAddresses, enabled: bool = True) -> None:
        self.log = ACCESS_LOG
        self.site = site
        self.clients = clients
        self.enabled = enabled

    def request_done(self, request: http.Request, started: float | None) -> None:
        """A finished HTTP response (``started``: its ``time.monotonic()`` at arrival)."""
        if self.enabled:
            self.log.info(_REQUEST, **self._fields(request, started))

    def stream_done(self, request: http.Request, started: float | None,
                    closed: Closed) -> None:
        """A streamed response (EventSource) ended; it may never have been finished."""
        if self.enabled:
            self.log.info(_SESSION, closed=closed, **self._fields(request, started))

    def session(self, request: http.Request, started: float | None) -> SessionEntry | None:
        """What an upgraded connection must remember to log its end (None: not logged).

        Only these few fields are kept, not the request, which a WebSocket outlives.
        """
        if not self.enabled:
            return None
        return SessionEntry(self, self.clients.of(request), _method(request), _path(request),
                            started if started is not None else time.monotonic())

    def _fields(self, request: http.Request, started: float | None) -> dict[str, object]:
        duration = (time.monotonic() - started) * 1000 if started is not None else 0.0
        return {"site": self.site, "client": self.clients.of(request),
                "method": _method(request), "path": _path(request), "status": request.code,
                "length": request.sentLength, "duration_ms": duration}


class SessionEntry:
    """The access-log line of one upgraded connection, written once when it ends."""

    __slots__ = ("_log", "client", "method", "path", "started")

    def __init__(self, log: AccessLog, client: str, method: str, path: str,
                 started: float) -> None:
        self._log: AccessLog | None = log
        self.client = client
        self.method = method
        self.path = path
        self.started = started

    def end(self, status: int, sent: int, closed: Closed) -> None:
        """Write the line (idempotent: only the first call logs)."""
        log, self._log = self._log, None
        if log is None:
            return
        log.log.info(_SESSION, site=log.site, client=self.client, method=self.method,
                     path=self.path, status=status, length=sent,
                     duration_ms=(time.monotonic() - self.started) * 1000, closed=closed)
