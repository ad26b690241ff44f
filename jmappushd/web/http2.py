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
* RFC 8441 (with ``extended_connect``, when :func:`jmappushd.web.h2connect.check`
  passed): ``SETTINGS_ENABLE_CONNECT_PROTOCOL = 1``; an extended CONNECT with
  ``:protocol websocket`` is handed to the resource at HEADERS (it never ends its
  request), and its DATA goes to the :class:`~jmappushd.web.h2connect.Tunnel` the
  resource opens (a resource that is no WebSocket endpoint answers 405 with its
  ``Allow``, an unknown path 404: :func:`~jmappushd.web.h2connect.connect_refused_by`).
  Any other CONNECT (none, or another ``:protocol``, or one not invited) is answered
  on its stream at once, headers only: 405 without ``:protocol``, 501 for another
  protocol, 400 when the setting was not sent. A tunnel's plain DATA frames skip
  ``h2``'s state machines and Twisted's send queue when nothing can come before them
  (:meth:`JMAPH2Connection.send_now`, :func:`jmappushd.net._fastpath.h2_take_data`),
  and what one read produces leaves in one transport write. Each
  CONNECT stream is reset with NO_ERROR once our side of it is complete, so a client
  that never ends its side holds no stream slot. The connection's receive window is
  the sum of its streams' (one stream that stops reading does not stall the others).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import h2.errors
import h2.exceptions
import h2.settings
import priority  # type: ignore[import-untyped]
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import _END_STREAM_SENTINEL as _END_STREAM
from twisted.web._http2 import H2Connection, H2Stream
from twisted.web.http import Request

from jmappushd.net import _fastpath
from jmappushd.net.timerwheel import TimerWheel, WheelTimer
from jmappushd.web import h2connect

log = Logger()

ALPN_H2 = b"h2"
MAX_CONCURRENT_STREAMS = 100
"""Streams one connection may have open at once (h2's default, advertised as is)."""
_STREAM_WINDOW = 65_535
"""Each stream's receive window (RFC 9113's initial value, which we do not change)."""

#: What this module reads or overrides of Twisted's HTTP/2 server.
_CONNECTION_NEEDS = ("_requestReceived", "_requestEnded", "_requestDataReceived",
                     "_requestAborted", "_requestDone", "_tryToWriteControlData",
                     "_sendPrioritisedData", "_handleWindowUpdate",
                     "_streamCleanupCallbacks", "timeoutConnection")
_STREAM_NEEDS = ("_conn", "_request", "streamID")
_INSTANCE_NEEDS = ("conn", "streams", "priority", "_outboundStreamQueues",
                   "_sendingDeferred", "_consumerBlocked", "_reactor",
                   "_bufferedControlFrames", "_stillProducing")

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
            and all(hasattr(probe, name) for name in _INSTANCE_NEEDS)
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


FRAMES_PER_TURN = 64
"""Frames one connection sends per reactor iteration before the others' turn."""


class _SendTurn:
    """The reactor as the connection's send loop sees it: while a turn runs, Twisted's
    ``callLater(0, send loop)`` only notes that there is more to send; everything else
    goes to the reactor."""

    __slots__ = ("_loop", "_reactor", "active", "again")

    def __init__(self, reactor: IReactorTime, loop: Callable[..., None]) -> None:
        self._reactor = reactor
        self._loop = loop
        self.active = False
        self.again = False

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> Any:
        if self.active and delay == 0 and f == self._loop and not args and not kwargs:
            self.again = True
            return None  # Twisted keeps no handle on this call
        return self._reactor.callLater(delay, f, *args, **kwargs)

    def seconds(self) -> float:
        return self._reactor.seconds()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class JMAPH2Connection(H2Connection):
    """Twisted's HTTP/2 connection with the daemon's timeouts and early answers."""

    requestFactory: Callable[..., Request]  # set by take_over, as Twisted's channel does

    def __init__(self, reactor: IReactorTime, timers: TimerWheel, head_timeout: float,
                 body_timeout: float | None, extended_connect: bool = False) -> None:
        super().__init__(reactor=reactor)
        self._turn = _SendTurn(reactor, self._sendPrioritisedData)
        self._reactor = self._turn
        self._extended_connect = extended_connect
        if extended_connect:  # in the first SETTINGS frame, never 0 before it (8441 §3)
            local = self.conn.local_settings
            codes = h2.settings.SettingCodes
            values = {codes(code): local[code] for code in local}
            values[codes.ENABLE_CONNECT_PROTOCOL] = 1
            self.conn.local_settings = h2.settings.Settings(client=False,
                                                            initial_values=values)
        self._tunnels: dict[int, h2connect.Tunnel] = {}
        # CONNECT streams handed to the resource, not yet tunnels: the DATA they hold
        self._connects: dict[int, list[tuple[bytes, int]]] = {}
        self._connects_ended: set[int] = set()
        self._lost = False
        self._timers = timers
        self._head_timeout = head_timeout
        self._body_timeout = body_timeout
        self._idle_timeout: float | None = None
        self._head: WheelTimer | None = None
        self._first_request_seen = False
        self._bodies: dict[int, WheelTimer] = {}
        self._registered: dict[int, list[Callable[[], None]]] = {}
        self._closing = False
        self._reading = False

    # -- one transport write per read --

    def dataReceived(self, data: bytes) -> None:
        """Twisted's, with what the events' handlers send directly (:meth:`send_now`) and
        the receive windows they reopen left in ``h2``'s buffer until Twisted's own
        ``_tryToWriteControlData`` after the last event: one write for the whole read."""
        self._reading = True
        try:
            if self._tunnels:
                data = self._take_tunnel_data(data)
                if not data:
                    if not self._lost:
                        self._tryToWriteControlData()
                    return
            super().dataReceived(data)
        finally:
            self._reading = False

    def _take_tunnel_data(self, data: bytes) -> bytes:
        """Deliver the plain DATA frames for tunnels at the start of ``data`` without
        ``h2``'s frame objects and state machines (:func:`_fastpath.h2_take_data` keeps
        its windows exactly); return the rest, from the first other frame, for ``h2``.

        A WebSocket client's requests are such frames, one per TLS record; through
        ``h2`` each cost more than the JMAP work of a ``Core/echo``."""
        taken, pos = _fastpath.h2_take_data(self.conn, data, self._tunnels)
        if not taken:
            return data
        self.resetTimeout()
        tunnels = self._tunnels
        for stream_id, payload in taken:
            tunnel = tunnels.get(stream_id)
            if tunnel is not None:
                tunnel.received(payload, len(payload))
            elif not self._lost:  # reset by an earlier frame's handler: window only
                self.conn.acknowledge_received_data(len(payload), stream_id)
        return data[pos:]

    def send_now(self, stream_id: int, data: bytes) -> bool:
        """Frame ``data`` as one DATA frame on ``stream_id`` now, bypassing Twisted's
        per-stream queue and priority loop, when nothing can come before it: the stream
        has nothing queued, the frame fits the stream's and the connection's window and
        the peer's maximum frame size, and the transport is not blocked. False: the
        caller queues it (the loop then sends it, in order, under flow control).

        The frame goes out with the read being handled (:meth:`dataReceived`) or at
        once, possibly ahead of other streams' queued frames (priority signals are only
        advice, RFC 9113 §5.3); the stream's producer is paused when its window is
        spent, as Twisted's loop does."""
        if (self._lost or not self._stillProducing or self._consumerBlocked is not None
                or self._bufferedControlFrames):
            return False
        queue = self._outboundStreamQueues.get(stream_id)
        if queue is None or queue:
            return False
        conn = self.conn
        try:
            window = conn.local_flow_control_window(stream_id)
            if len(data) > window or len(data) > conn.max_outbound_frame_size:
                return False
            if not _fastpath.h2_send_data(conn, stream_id, data):
                conn.send_data(stream_id, data)
        except h2.exceptions.ProtocolError:
            return False  # closed by the peer meanwhile: the queue's path drops it
        if not self._reading:
            self._tryToWriteControlData()
        if window - len(data) <= 0:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.flowControlBlocked()
        return True

    def open_window(self, stream_id: int, length: int) -> None:
        """Acknowledge ``length`` octets of DATA read on ``stream_id`` (``h2`` sends the
        WINDOW_UPDATE once half the window is used), written with the read."""
        self.conn.acknowledge_received_data(length, stream_id)
        if not self._reading:
            self._tryToWriteControlData()

    # -- idle timeout only while idle --

    def connectionMade(self) -> None:
        self._idle_timeout = self.timeOut
        super().connectionMade()
        self.conn.increment_flow_control_window(
            (MAX_CONCURRENT_STREAMS - 1) * _STREAM_WINDOW)
        self._tryToWriteControlData()
        if self._head_timeout > 0:
            self._head = self._timers.call_later(self._head_timeout, self._head_expired)

    def _requestReceived(self, event: Any) -> None:
        method = protocol = None
        for name, value in event.headers:
            if name == b":method":
                method = value
            elif name == b":protocol":
                protocol = value
        if method == b"CONNECT":
            self._connect_received(event, protocol)
            return
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
        stream_id = event.stream_id
        tunnel = self._tunnels.get(stream_id)
        if tunnel is not None:
            tunnel.received(event.data, event.flow_controlled_length)
        elif stream_id in self._connects:  # held until the resource opens the tunnel
            self._connects[stream_id].append((event.data, event.flow_controlled_length))
        elif stream_id in self.streams:
            super()._requestDataReceived(event)
        else:  # answered early and reset: only the connection window matters
            self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                event.stream_id)

    def _requestEnded(self, event: Any) -> None:
        stream_id = event.stream_id
        tunnel = self._tunnels.get(stream_id)
        if tunnel is not None:
            tunnel.ended()
            return
        if stream_id in self._connects:  # a CONNECT's request was handed over already
            self._connects_ended.add(stream_id)
            return
        self._cancel_body(stream_id)
        if stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)

    def _requestDone(self, streamID: int) -> None:
        self._cancel_body(streamID)
        super()._requestDone(streamID)
        tunnel = self._tunnels.pop(streamID, None)
        if tunnel is not None:
            tunnel.gone()
        held = self._connects.pop(streamID, None)
        self._connects_ended.discard(streamID)
        if held:
            self.release_window(streamID, sum(length for _, length in held))
        if not self.streams:
            if self._closing:
                self._goaway()
            elif self._idle_timeout is not None:
                self.setTimeout(self._idle_timeout)

    def connectionLost(self, reason: Failure,  # type: ignore[override]
                       _cancelTimeouts: bool = True) -> None:
        self._lost = True
        self._cancel_head()
        for timer in self._bodies.values():
            timer.cancel()
        self._bodies.clear()
        self._registered.clear()
        super().connectionLost(reason, _cancelTimeouts)

    # -- flow control: no busy loop on a spent window --

    def _sendPrioritisedData(self, *args: Any) -> None:
        """One send turn: up to :data:`FRAMES_PER_TURN` frames, in Twisted's priority
        order, then the reactor's turn.

        Twisted sends one frame per reactor iteration (``callLater(0)`` after each), so
        16 answers queued at once left as 16 TLS writes and 16 TCP sends, each after its
        own poll; an HTTP/1.1 connection sends the same 16 as one write (measured: RFC
        8441 echo with 16 in flight at 0.26x of HTTP/1.1, four times its CPU per
        request). While a turn runs, :class:`_SendTurn` notes Twisted's "again" instead
        of scheduling it, so the frames of one turn reach the TCP buffer together; the
        frames and their order are unchanged.

        Twisted also leaves a stream whose window is spent, but whose queue is not
        empty, unblocked in the priority tree, so its send loop spun on ``callLater(0)``
        until the client opened the window (100 % CPU, and ``Clock.advance`` never
        returned). Such streams are blocked before each frame; a WINDOW_UPDATE wakes
        them."""
        turn = self._turn
        if args or turn.active:
            # Woken by a Deferred (data queued, a window opened, the transport ready),
            # perhaps inside a resource's write: one frame, as Twisted does, so what the
            # writer does next (e.g. add a stream-cleanup callback) still comes before
            # the stream's end; the rest follows in a turn of its own.
            self._block_spent_windows()
            super()._sendPrioritisedData(*args)
            return
        turn.active = True
        try:
            for _ in range(FRAMES_PER_TURN):
                self._block_spent_windows()
                turn.again = False
                super()._sendPrioritisedData()
                if not turn.again:  # waiting (data, window, transport): a Deferred calls
                    return
        finally:
            turn.active = False
        turn.callLater(0, self._sendPrioritisedData)  # the budget is spent

    def _block_spent_windows(self) -> None:
        window = self.conn.local_flow_control_window
        for stream_id, queue in self._outboundStreamQueues.items():
            if queue and queue[0] is not _END_STREAM and window(stream_id) <= 0:
                self.priority.block(stream_id)

    def _handleWindowUpdate(self, event: Any) -> None:
        super()._handleWindowUpdate(event)
        waiting, self._sendingDeferred = self._sendingDeferred, None
        if waiting is not None:  # the loop sleeps: a stream may be sendable again
            waiting.callback(event.stream_id)

    # -- RFC 8441 --

    def _connect_received(self, event: Any, protocol: bytes | None) -> None:
        """HEADERS of a CONNECT: an invited WebSocket goes to the resource now; the rest
        is refused on its stream."""
        stream_id = event.stream_id
        if not self._first_request_seen:
            self._first_request_seen = True
            self._cancel_head()
        refusal = (405 if protocol is None else 400 if not self._extended_connect
                   else 501 if protocol != h2connect.WEBSOCKET else None)
        if refusal is not None:
            self._refuse_connect(stream_id, refusal)
            return
        if not self.streams:
            self.setTimeout(None)
        plain = self.requestFactory
        self.requestFactory = h2connect.connect_request_factory(plain)
        try:
            super()._requestReceived(event)
        finally:
            self.requestFactory = plain
        stream = self.streams[stream_id]
        request = stream._request
        h2connect.mark_connect(request, protocol)
        self._connects[stream_id] = []
        cleanup = self._streamCleanupCallbacks[stream_id]
        cleanup.addCallback(lambda _: self.reset_finished(stream_id))
        request.requestReceived(stream.command, stream.path, b"HTTP/2")

    def _refuse_connect(self, stream_id: int, code: int) -> None:
        log.debug("refused an HTTP/2 CONNECT with {code}", code=code)
        with contextlib.suppress(priority.MissingStreamError):
            self.priority.remove_stream(stream_id)  # a PRIORITY frame may have added it
        try:
            self.conn.send_headers(stream_id, [(b":status", str(code).encode())],
                                   end_stream=True)
        except h2.exceptions.ProtocolError:
            return
        self.reset_finished(stream_id)

    def attach_tunnel(self, tunnel: h2connect.Tunnel) -> None:
        """The resource accepted a CONNECT: the stream's DATA goes to ``tunnel`` now."""
        stream_id = tunnel.stream_id
        self._tunnels[stream_id] = tunnel
        for data, length in self._connects.pop(stream_id, ()):
            tunnel.received(data, length)
        if stream_id in self._connects_ended:
            self._connects_ended.discard(stream_id)
            tunnel.ended()
        if self._consumerBlocked is not None:
            tunnel.block("tcp")

    def release_window(self, stream_id: int, length: int) -> None:
        """Give back flow-control credit for DATA that will never be read."""
        if self._lost:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.acknowledge_received_data(length, stream_id)
        self._tryToWriteControlData()

    def abort_stream(self, stream_id: int) -> None:
        """RST_STREAM(CANCEL) and forget the stream (a tunnel whose peer went silent)."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        if not self._tryToWriteControlData():
            return  # the connection is gone, and its streams with it
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.connectionLost(Failure(ConnectionAborted("stream reset")))
            self._requestDone(stream_id)

    def pauseProducing(self) -> None:
        """TCP is blocked: the tunnels hold what can wait (their streams' queues would
        only grow)."""
        super().pauseProducing()
        for tunnel in list(self._tunnels.values()):
            tunnel.block("tcp")

    def resumeProducing(self) -> None:
        super().resumeProducing()
        for tunnel in list(self._tunnels.values()):
            tunnel.unblock("tcp")

    # -- what answer_early needs --

    def after_registered(self, stream_id: int, call: Callable[[], None]) -> None:
        self._registered.setdefault(stream_id, []).append(call)

    def reset_finished(self, stream_id: int) -> None:
        """Our response is complete: tell the client to stop sending its body."""
        if self._lost:
            return
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
    transport (what Twisted's ``_GenericHTTPChannelProtocol`` does), and return it.
    RFC 8441 is offered whenever :func:`jmappushd.web.h2connect.check` passes."""
    transport = channel.transport
    idle = channel.timeOut  # before setTimeout(None) below clears it
    producer = channel._networkProducer
    producer.unregisterProducer()
    channel.setTimeout(None)
    conn = JMAPH2Connection(channel.clock, timers, head_timeout, idle,
                            extended_connect=h2connect.check())
    conn.requestFactory = channel.requestFactory
    conn.site = channel.site
    conn.factory = channel.factory
    conn.timeOut = idle
    conn.callLater = channel.clock.callLater  # type: ignore[method-assign]
    conn.makeConnection(transport)
    producer.registerProducer(conn, True)
    return conn
