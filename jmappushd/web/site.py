"""The twisted.web Site used by both listeners: body limits, slow-client deadlines and
secret-free access logs.

Bodies larger than the limit are refused as soon as their size is known (from
``Content-Length``, or while a chunked body streams in), before they are
buffered, with the JMAP ``limit`` problem (API-21). A request whose headers are not
complete ``header-timeout`` seconds after its first byte, or whose body is not
complete one idle timeout after its headers, is answered 408 and closed
(:class:`JMAPChannel`, :mod:`jmappushd.net.headertimeout`). The access log
(``accesslog``) is one line per request without the query string, so an
``access_token`` is never logged; a push session (EventSource, WebSocket) is
logged by its transport when it ends instead (:func:`log_as_session`).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from jmappushd.jmap.ijson import dumps
from jmappushd.jmap.problems import PROBLEM_CONTENT_TYPE, RequestProblem
from jmappushd.net._fastpath import raw_transport
from jmappushd.net.headertimeout import Phase, RequestDeadline
from jmappushd.net.timerwheel import TimerWheel, WheelTimer
from jmappushd.web import http2 as h2web
from jmappushd.web.accesslog import AccessLog, Closed, SessionEntry
from jmappushd.web.clientaddr import ClientAddresses
from jmappushd.web.responses import problem_body

_DONE = Failure(ConnectionDone())

ABORT_GRACE_S = 1.0
"""How long a timed-out connection may take to accept its 408 before it is aborted."""


_UNSET = object()

# Request attributes twisted.web sets only on some requests (the status, the end of a
# response, a producer, HEAD, conditional GETs, Basic credentials, ...), kept in
# slots. CPython shares one table of attribute names among the instances of a class
# and keeps their values inline, but only while the class's instances use fewer than
# 30 names in all; past that, every instance that sets one more name gets a dict of
# its own: 1.6 KiB instead of about 0.3 for an idle EventSource stream's request
# (docs/benchmarks.rst, "EventSource memory per idle stream"). In slots, the names
# left in the instance dict are the few every request sets, whatever other requests
# of the site did before. Each slot starts as Twisted's class default (the names
# without one stay unset, as before): same reads, same ``hasattr``.
_SLOTTED_DEFAULTS: dict[str, object] = {
    name: getattr(Request, name, _UNSET)
    for name in ("code", "code_message", "finished", "_disconnected", "producer",
                 "streamingProducer", "startedWriting", "chunked", "sentLength", "etag",
                 "lastModified", "_forceSSL", "_inFakeHead", "_encoder", "appRootURL",
                 "defaultContentType", "user", "password")
}


class LimitedRequest(Request):
    """A Request that refuses oversized bodies before buffering them.

    ``logged_as_session``: a transport logs this request when its session ends.
    """

    __slots__ = ("_received", "_refused", "logged_as_session", "started",
                 *_SLOTTED_DEFAULTS)
    max_body: int = 10_000_000
    accesslog: AccessLog | None = None  # the site's, set on its request class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Twisted's class defaults, one by one (a loop of setattr costs twice as much);
        # tests/test_eventsource_memory.py checks each against Twisted's own.
        self.code = Request.code
        self.code_message = Request.code_message
        self.finished = Request.finished
        self._disconnected = Request._disconnected
        self.producer = Request.producer
        self.startedWriting = Request.startedWriting
        self.chunked = Request.chunked
        self.sentLength = Request.sentLength
        self.etag = Request.etag
        self.lastModified = Request.lastModified
        self._forceSSL = Request._forceSSL
        self._inFakeHead = Request._inFakeHead
        self._encoder = Request._encoder
        self.appRootURL = Request.appRootURL
        self.defaultContentType = Request.defaultContentType
        self._received = 0
        self._refused = False
        self.logged_as_session = False
        self.started = time.monotonic()
        super().__init__(*args, **kwargs)

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
        if h2web.is_h2_stream(self.channel):  # no transport: an HTTP/2 response
            h2web.answer_early(self, 400, {b"Content-Type": PROBLEM_CONTENT_TYPE}, body)
            return
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


class JMAPChannel(http.HTTPChannel):
    """An HTTP/1.1 channel whose requests must arrive in time (slowloris).

    The :class:`RequestDeadline` runs from a request's first byte while the channel
    parses its request line and headers (``line_mode``), and from the end of the
    headers until the end of a body; requests buffered behind one still being
    answered start their clock when the channel gets to them.
    """

    log = Logger()
    clock: IReactorTime
    site: JMAPSite
    deadline: RequestDeadline | None = None
    h2: h2web.JMAPH2Connection | None = None  # took the transport over (ALPN h2)
    _negotiated = False
    _abort: WheelTimer | None = None
    _lost = False
    _host: IAddress | None = None

    def getHost(self) -> IAddress:
        """The connection's local address, asked of the socket once: ``Request`` asks
        for it on every request, and each time is a ``getsockname()`` system call; a
        connected socket's local address never changes."""
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def callLater(self, period: float, func: Callable[[], None]) -> IDelayedCall:
        """The idle timeout's timer, on the site's clock (tests inject one)."""
        return self.clock.callLater(period, func)

    def dataReceived(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.dataReceived(data)
            return
        if not self._negotiated:
            self._negotiated = True
            if self.site.http2 and h2web.negotiated_h2(self.transport):
                self.h2 = self._become_h2()
                self.h2.dataReceived(data)
                return
        if self._abort is not None:
            return  # timed out: nothing more is read from this connection
        if self.deadline is not None and self.line_mode and data:
            self.deadline.head_started()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        if self.deadline is not None:
            self.deadline.head_done(body_follows=self.length != 0)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        super().allContentReceived()

    def _become_h2(self) -> h2web.JMAPH2Connection:
        """ALPN chose HTTP/2: an HTTP/2 connection takes the transport over; its own
        deadlines replace this channel's (see :mod:`jmappushd.web.http2`)."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        return h2web.take_over(self, self.site.timers, self.site.header_timeout)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self.h2 is not None:
            self._lost = True
            self.h2.connectionLost(reason)
            return
        self._lost = True
        if self.deadline is not None:
            self.deadline.cancel()
        abort, self._abort = self._abort, None
        if abort is not None:
            abort.cancel()
        super().connectionLost(reason)

    def close_when_idle(self) -> None:
        """The site stops: close now if no request is under way, else after it."""
        if self._lost or self.transport is None:
            return  # gone, or handed over (a WebSocket owns the transport now)
        if self.h2 is not None:
            self.h2.close_when_idle()
            return
        self.persistent = False
        if not self.requests:
            self.loseConnection()

    def deadline_expired(self, phase: Phase) -> None:
        """The :class:`RequestDeadline` ran out: the limit of that phase was exceeded."""
        site = self.site
        limit = site.header_timeout if phase is Phase.HEAD else (site.timeOut or 0)
        self.too_slow(phase, site.timers, limit)

    def too_slow(self, phase: Phase, timers: TimerWheel, limit: float) -> None:
        """Answer 408 (RFC 9110 §15.5.9) and close; abort if the peer does not take it."""
        transport = self.transport
        if transport is None or self._abort is not None:
            return
        self.log.debug("closing a connection from {peer}: the request {phase} took longer "
                       "than {limit} s", peer=transport.getPeer(), phase=phase.value,
                       limit=limit)
        _, body = request_timeout_body(phase.value, limit)
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\n"
            b"Content-Type: " + PROBLEM_CONTENT_TYPE + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body)
        # TCP and TLS transports can abort; ITransport itself only promises to close.
        abort = getattr(transport, "abortConnection", transport.loseConnection)
        self._abort = timers.call_later(ABORT_GRACE_S, abort)
        self.loseConnection()


def request_timeout_body(phase: str, limit: float) -> tuple[dict[bytes, bytes], bytes]:
    """The headers and body of the 408 for a request whose ``phase`` was too slow."""
    body = dumps(problem_body(
        408, f"the request {phase} did not arrive within {limit:g} s",
        title="Request Timeout"))
    return {b"Content-Type": PROBLEM_CONTENT_TYPE}, body


class JMAPSite(Site):
    """A Site with a per-site body limit, slow-request deadlines and a structured access log.

    ``header_timeout`` (seconds, 0 = none) bounds how long a request's headers may take;
    its body may take the idle timeout (``timeout``, Twisted's 60 s by default) as a
    whole. The deadlines go on ``timers`` (the daemon's wheel; one of the site's own
    on ``reactor`` otherwise). Each connection is a :class:`JMAPChannel`; with ``http2``
    (and Twisted's HTTP/2 server usable), TLS connections offer ``h2`` through ALPN and
    one that picks it is served by :mod:`jmappushd.web.http2`.
    """

    def __init__(self, resource: IResource, max_body: int, name: str, access_log: bool = True,
                 clients: ClientAddresses | None = None, header_timeout: float = 0,
                 timers: TimerWheel | None = None, http2: bool = False,
                 **kwargs: Any) -> None:
        self.accesslog = AccessLog(name, clients or ClientAddresses(), access_log)
        request_class = type("LimitedRequest", (LimitedRequest,),
                             {"max_body": max_body, "accesslog": self.accesslog})
        # No endpoint takes HTML form posts: without this Twisted parses every POST's
        # Content-Type with the email package (the largest cost of an API request).
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, requestFactory=request_class, **kwargs)
        self.displayTracebacks = False
        self.name = name
        self.noisy = False
        self.header_timeout = header_timeout
        self.http2 = http2 and h2web.check()
        self.timers = timers if timers is not None else TimerWheel(self.reactor)
        # Open connections, so that none outlives the site (nor its idle timer).
        self._channels: weakref.WeakSet[JMAPChannel] = weakref.WeakSet()

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN (IProtocolNegotiationFactory): h2 only when configured and usable."""
        return [h2web.ALPN_H2, b"http/1.1"] if self.http2 else [b"http/1.1"]

    def stopFactory(self) -> None:
        """The last port stopped: keep-alive connections close (after their request)."""
        for channel in list(self._channels):
            channel.close_when_idle()
        super().stopFactory()

    def buildProtocol(self, addr: IAddress | None) -> JMAPChannel:  # type: ignore[override]
        channel = JMAPChannel()
        channel.factory = self
        channel.site = self
        channel.requestFactory = self.requestFactory
        channel.clock = self.reactor
        body = self.timeOut
        channel.timeOut = None if body is None else math.ceil(body)
        if self.header_timeout or body:
            # A bound method, not a closure: a closure and its cells cost about 150
            # bytes more per connection (docs/benchmarks.rst).
            channel.deadline = RequestDeadline(self.timers, self.header_timeout, body,
                                               channel.deadline_expired)
        self._channels.add(channel)
        return channel

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
