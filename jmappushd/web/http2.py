"""HTTP/2 connections of the JMAP sites, negotiated through ALPN (``[server] http2``).

Twisted's HTTP/2 server (``twisted.web._http2``) is private API, so every read of
its internals is in this module, and :func:`check` verifies at start-up that they
are what it expects (otherwise HTTP/2 is not offered, logged once). What is
changed against Twisted's own :class:`H2Connection`:

* The idle timeout (Twisted's 60 s request timeout, reset only by traffic) applies
  only while no stream is open, as HTTP/1.1 keep-alive does: an EventSource stream
  whose ``ping`` is longer than that is not GOAWAY'd with PROTOCOL_ERROR.
* ``[server] header-timeout`` runs from the connection's first byte until its first
  request's headers are complete; a request body must be complete within the idle
  timeout from its headers (one deadline per stream), else the stream is answered 408
  and reset. Both on the daemon's timer wheel. ``max-connections-per-address`` counts
  the TCP connection at accept, as for HTTP/1.1; each connection carries at most
  ``MAX_CONCURRENT_STREAMS`` requests at once.
* A response sent before its request body is complete (the over-size refusal, a 408)
  is an ordinary HTTP/2 response, followed by RST_STREAM(NO_ERROR) (RFC 9113 §8.1),
  and only that stream ends.
* When the site stops, an idle connection gets GOAWAY(NO_ERROR) and closes; a busy
  one after its last stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import h2.errors
import h2.exceptions
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection, H2Stream
from twisted.web.http import Request

from jmappushd.net.timerwheel import TimerWheel, WheelTimer

log = Logger()

ALPN_H2 = b"h2"
MAX_CONCURRENT_STREAMS = 100
"""Streams one connection may have open at once (h2's default, advertised as is)."""

#: What this module reads or overrides of Twisted's HTTP/2 server.
_CONNECTION_NEEDS = ("_requestReceived", "_requestEnded", "_requestDataReceived",
                     "_requestAborted", "_requestDone", "_tryToWriteControlData",
                     "_streamCleanupCallbacks", "timeoutConnection")
_STREAM_NEEDS = ("_conn", "_request", "streamID")

_checked: bool | None = None


def check() -> bool:
    """Whether Twisted's HTTP/2 server is installed and as this module expects (once)."""
    global _checked
    if _checked is None:
        _checked = _probe()
        if not _checked:
            log.warn("HTTP/2 is off: the installed Twisted's HTTP/2 server "
                     "(twisted.web._http2, h2) is missing or not what jmappushd expects; "
                     "ssl: listeners offer HTTP/1.1 only")
    return _checked


def _probe() -> bool:
    if not all(hasattr(H2Connection, name) for name in _CONNECTION_NEEDS
               if not name.startswith("_stream")):
        return False
    try:
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        probe = H2Connection(reactor=Clock())
        probe.makeConnection(StringTransport())
        stream = H2Stream(1, probe, [(b":method", b"GET"), (b":path", b"/")],
                          _ProbeRequest, None, None)
    except Exception:
        return False
    return (isinstance(getattr(probe, "_streamCleanupCallbacks", None), dict)
            and hasattr(probe, "conn") and hasattr(probe, "streams")
            and all(hasattr(stream, name) for name in _STREAM_NEEDS))


class _ProbeRequest(Request):
    """A request that accepts what H2Stream's constructor calls."""


def negotiated_h2(transport: ITransport | None) -> bool:
    """Whether ALPN picked HTTP/2 on ``transport`` (only TLS transports negotiate)."""
    return getattr(transport, "negotiatedProtocol", None) == ALPN_H2


def is_h2_stream(channel: object) -> bool:
    return isinstance(channel, H2Stream)


def answer_early(request: Request, code: int, headers: dict[bytes, bytes], body: bytes
                 ) -> None:
    """Answer ``request`` (on an HTTP/2 stream) before its body is complete, then reset the
    stream with NO_ERROR so the client stops sending (RFC 9113 §8.1)."""
    stream: Any = request.channel
    conn = stream._conn
    stream_id = stream.streamID

    def send() -> None:
        if stream_id not in conn.streams or request.finished:
            return
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.write(body)
        request.finish()
        cleanup = conn._streamCleanupCallbacks.get(stream_id)
        if cleanup is not None:
            cleanup.addCallback(lambda _: conn.reset_finished(stream_id))

    if stream_id in conn.streams:
        send()
    else:  # still in H2Stream's constructor (gotLength): once the stream is registered
        conn.after_registered(stream_id, send)


class JMAPH2Connection(H2Connection):
    """Twisted's HTTP/2 connection with the daemon's timeouts and early answers."""

    def __init__(self, reactor: IReactorTime, timers: TimerWheel, head_timeout: float,
                 body_timeout: float | None) -> None:
        super().__init__(reactor=reactor)
        self._timers = timers
        self._head_timeout = head_timeout
        self._body_timeout = body_timeout
        self._idle_timeout: float | None = None
        self._head: WheelTimer | None = None
        self._first_request_seen = False
        self._bodies: dict[int, WheelTimer] = {}
        self._registered: dict[int, list[Callable[[], None]]] = {}
        self._closing = False

    # -- idle timeout only while idle --

    def connectionMade(self) -> None:
        self._idle_timeout = self.timeOut
        super().connectionMade()
        if self._head_timeout > 0:
            self._head = self._timers.call_later(self._head_timeout, self._head_expired)

    def _requestReceived(self, event: Any) -> None:
        if not self.streams:
            self.setTimeout(None)  # a stream lives as long as it needs
        if not self._first_request_seen:
            self._first_request_seen = True
            self._cancel_head()
        super()._requestReceived(event)
        stream_id = event.stream_id
        if event.stream_ended is None and self._body_timeout:
            self._bodies[stream_id] = self._timers.call_later(
                self._body_timeout, lambda: self._body_expired(stream_id))
        for pending in self._registered.pop(stream_id, ()):
            pending()

    def _requestDataReceived(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestDataReceived(event)
        else:  # answered early and reset: only the connection window matters
            self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                event.stream_id)

    def _requestEnded(self, event: Any) -> None:
        self._cancel_body(event.stream_id)
        if event.stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)

    def _requestDone(self, streamID: int) -> None:
        self._cancel_body(streamID)
        super()._requestDone(streamID)
        if not self.streams:
            if self._closing:
                self._goaway()
            elif self._idle_timeout is not None:
                self.setTimeout(self._idle_timeout)

    def connectionLost(self, reason: Failure,  # type: ignore[override]
                       _cancelTimeouts: bool = True) -> None:
        self._cancel_head()
        for timer in self._bodies.values():
            timer.cancel()
        self._bodies.clear()
        self._registered.clear()
        super().connectionLost(reason, _cancelTimeouts)

    # -- what answer_early needs --

    def after_registered(self, stream_id: int, call: Callable[[], None]) -> None:
        self._registered.setdefault(stream_id, []).append(call)

    def reset_finished(self, stream_id: int) -> None:
        """Our response is complete: tell the client to stop sending its body."""
        try:
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return  # the client had finished (or reset) it already
        self._tryToWriteControlData()

    # -- deadlines --

    def _head_expired(self) -> None:
        self._head = None
        if not self._first_request_seen and self.transport is not None:
            log.debug("closing an HTTP/2 connection from {peer}: no request within "
                      "{limit} s", peer=self.transport.getPeer(), limit=self._head_timeout)
            self._goaway()

    def _body_expired(self, stream_id: int) -> None:
        self._bodies.pop(stream_id, None)
        stream = self.streams.get(stream_id)
        if stream is not None:
            from jmappushd.web.site import request_timeout_body

            answer_early(stream._request, 408, *request_timeout_body(
                "body", self._body_timeout or 0))

    def _cancel_head(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            head.cancel()

    def _cancel_body(self, stream_id: int) -> None:
        timer = self._bodies.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    # -- shutdown --

    def close_when_idle(self) -> None:
        """The site stops: GOAWAY now if no stream is open, else after the last."""
        self._closing = True
        if not self.streams:
            self._goaway()

    def _goaway(self) -> None:
        if self.transport is None:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
        self._tryToWriteControlData()
        self.transport.loseConnection()



def take_over(channel: Any, timers: TimerWheel, head_timeout: float) -> JMAPH2Connection:
    """Replace an HTTP/1.1 channel that negotiated h2 by an HTTP/2 connection on its
    transport (what Twisted's ``_GenericHTTPChannelProtocol`` does), and return it."""
    transport = channel.transport
    idle = channel.timeOut  # before setTimeout(None) below clears it
    producer = channel._networkProducer
    producer.unregisterProducer()
    channel.setTimeout(None)
    conn = JMAPH2Connection(channel.clock, timers, head_timeout, idle)
    conn.requestFactory = channel.requestFactory  # type: ignore[attr-defined]
    conn.site = channel.site
    conn.factory = channel.factory
    conn.timeOut = idle
    conn.callLater = channel.clock.callLater  # type: ignore[method-assign]
    conn.makeConnection(transport)
    producer.registerProducer(conn, True)
    return conn
