"""RFC 8441 extended CONNECT on the daemon's HTTP/2 connections: one stream as a tunnel.

The sibling of :mod:`jmappushd.web.http2` and, with it, the only module that reads
Twisted's private HTTP/2 server. A WebSocket over HTTP/2 is an extended CONNECT
(``:method CONNECT``, ``:protocol websocket``) that never ends its request, so
:class:`~jmappushd.web.http2.JMAPH2Connection` hands it to the resource at HEADERS;
a resource that accepts it calls :func:`open_tunnel`, which answers ``:status 200``
and from then on carries the stream's DATA both ways as bytes:

* inbound DATA goes to the :class:`TunnelHandler` and is acknowledged (the stream's
  window reopened) only once delivered, so a handler that pauses reading stops the
  client after one window (64 KiB), while other streams go on;
* outbound bytes are framed at once when nothing is queued on the stream and both
  windows allow (:meth:`~jmappushd.web.http2.JMAPH2Connection.send_now`), else they
  go through Twisted's per-stream queue, priority tree and flow control; the handler
  is paused while the stream's window is spent or the TCP connection is blocked;
* :meth:`Tunnel.finish` ends the stream (END_STREAM, the TCP FIN of RFC 8441 §4),
  :meth:`Tunnel.abort` resets it (RST_STREAM CANCEL, the TCP RST), and a client's
  RST_STREAM or the connection's end reaches the handler as ``tunnel_closed``.

An extended CONNECT that traverses to a resource which is no WebSocket endpoint (the
API, the session) is answered 405 with that resource's ``Allow`` before it renders.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.http import Request
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request as ServerRequest
from zope.interface import implementer

from jmappushd.web.responses import write_problem

if TYPE_CHECKING:
    from jmappushd.web.http2 import JMAPH2Connection

log = Logger()

WEBSOCKET = b"websocket"
"""The only ``:protocol`` served (RFC 8441 §4)."""

_PROTOCOL_ATTR = "_jmappushd_connect_protocol"
_checked: bool | None = None


class TunnelHandler(Protocol):
    """Who uses an accepted stream (the WebSocket session)."""

    def tunnel_data(self, data: bytes) -> None:
        """Bytes the client sent (only while reading is not paused)."""

    def tunnel_ended(self) -> None:
        """The client ended its side (END_STREAM): nothing more will arrive."""

    def tunnel_closed(self) -> None:
        """The stream is gone (finished, reset by either side, connection lost); once."""

    def pause_writing(self) -> None:
        """Writes would only queue (stream window spent, TCP blocked): hold what can wait."""

    def resume_writing(self) -> None: ...


def connect_protocol(request: Request) -> bytes | None:
    """The ``:protocol`` of an extended CONNECT the connection invited (else None)."""
    value = getattr(request, _PROTOCOL_ATTR, None)
    return value if isinstance(value, bytes) else None


def mark_connect(request: Request, protocol: bytes | None) -> None:
    setattr(request, _PROTOCOL_ATTR, protocol)


def is_connect_stream(request: Request) -> bool:
    """An HTTP/2 CONNECT, extended or not (its request never ends by itself)."""
    return hasattr(request, _PROTOCOL_ATTR)


_tunnel_classes: dict[type[Request], type[Request]] = {}


def connect_request_factory(factory: Callable[..., Request]) -> Callable[..., Request]:
    """The site's request class for a CONNECT: no body is expected, so no temporary file
    is opened for one (Twisted's default for a request without a length)."""
    if isinstance(factory, type) and issubclass(factory, Request):
        return _connect_class(factory)
    return cast("Callable[..., Request]", factory)  # not a request class: left as is


def _connect_class(base: type[Request]) -> type[Request]:
    cls = _tunnel_classes.get(base)
    if cls is None:
        def gotLength(self: Request, length: int | None) -> None:
            base.gotLength(self, 0 if length is None else length)

        def render(self: ServerRequest, resource: IResource) -> None:
            allowed = connect_refused_by(resource)
            if allowed is None:
                base.render(self, resource)  # type: ignore[attr-defined]
                return
            self.setHeader(b"Allow", b", ".join(allowed))
            write_problem(self, 405, "this resource is not a WebSocket endpoint; "
                          "an extended CONNECT opens one only at the JMAP WebSocket URL")

        cls = _tunnel_classes[base] = type(base.__name__, (base,),
                                           {"gotLength": gotLength, "render": render})
    return cls


def connect_refused_by(resource: IResource) -> tuple[bytes, ...] | None:
    """The methods ``resource`` allows when it does not take an extended CONNECT, or None
    when it decides itself (the WebSocket handshake; the JSON 404 of an unknown path).

    Twisted would answer a CONNECT to a resource without ``render_CONNECT`` with a 501
    HTML page ("Huh?"), which says the server lacks the method; it lacks it only here,
    so the answer is 405 with ``Allow`` (RFC 9110 §15.5.6): the methods the resource
    declares in ``cors_methods`` (what the CORS gate reads too; our resources with their
    own ``render`` declare them), else those it has a ``render_<METHOD>`` for.
    """
    declared = getattr(resource, "cors_methods", None)
    if declared is not None:
        return None if b"CONNECT" in declared else tuple(bytes(m) for m in declared)
    if type(resource).render is not Resource.render:  # it answers every method itself
        return None
    if getattr(resource, "render_CONNECT", None) is not None:
        return None
    return tuple(sorted(name[7:].encode("ascii") for name in dir(resource)
                        if name.startswith("render_") and name[7:].isupper()))


@implementer(IPushProducer)
class Tunnel:
    """One accepted extended-CONNECT stream; its stream is its push consumer."""

    __slots__ = ("_blocked", "_conn", "_early", "_end_pending", "_handler",
                 "_paused_reading", "_stream", "closed", "request", "sent", "stream_id")

    def __init__(self, conn: JMAPH2Connection, stream: Any, request: Request,
                 handler: TunnelHandler) -> None:
        self._conn = conn
        self._stream = stream
        self.stream_id: int = stream.streamID
        self.request = request
        self._handler = handler
        self._paused_reading = True  # until the handler is ready: resume_reading()
        self._early: deque[tuple[bytes, int]] = deque()
        self._end_pending = False
        self._blocked: set[str] = set()
        self.closed = False
        self.sent = 0

    @property
    def writable(self) -> bool:
        return not self.closed and not self.request.finished

    def write(self, data: bytes) -> None:
        """Send bytes as DATA on the stream: at once when nothing is queued before them
        and the windows allow (:meth:`~jmappushd.web.http2.JMAPH2Connection.send_now`),
        else through the stream's queue (flow-controlled, prioritised)."""
        if self.writable:
            self.sent += len(data)
            if not self._conn.send_now(self.stream_id, data):
                self._stream.write(data)

    def finish(self) -> None:
        """End our side (END_STREAM after what is queued); the stream then closes."""
        if self.writable:
            self.request.finish()

    def abort(self) -> None:
        """Reset the stream (CANCEL): the peer stopped answering."""
        if not self.closed:
            self._conn.abort_stream(self.stream_id)

    # -- reading --

    def pause_reading(self) -> None:
        self._paused_reading = True

    def resume_reading(self) -> None:
        """Deliver what was held (and acknowledge it), then read on."""
        self._paused_reading = False
        early = self._early
        while early and not self._paused_reading and not self.closed:
            data, length = early.popleft()
            self._deliver(data, length)
        if (self._end_pending and not early and not self.closed
                and not self._paused_reading):
            self._end_pending = False
            self._handler.tunnel_ended()

    def received(self, data: bytes, flow_length: int) -> None:
        """DATA for the stream: delivered, then acknowledged; or held while paused."""
        if self.closed:
            return
        if self._paused_reading or self._early:
            self._early.append((data, flow_length))
            return
        self._deliver(data, flow_length)

    def _deliver(self, data: bytes, flow_length: int) -> None:
        if data:
            self._handler.tunnel_data(data)
        if not self.closed:
            self._conn.open_window(self.stream_id, flow_length)

    def ended(self) -> None:
        """The client's END_STREAM, after whatever it sent before."""
        if self.closed:
            return
        if self._paused_reading or self._early:
            self._end_pending = True
        else:
            self._handler.tunnel_ended()

    def gone(self) -> None:
        if not self.closed:
            self.closed = True
            held = sum(length for _, length in self._early)
            self._early.clear()
            if held:  # never to be read: give the connection window back
                self._conn.release_window(self.stream_id, held)
            self._handler.tunnel_closed()

    # -- IPushProducer (the stream's window) and the connection's TCP back-pressure --

    def pauseProducing(self) -> None:
        self.block("window")

    def resumeProducing(self) -> None:
        self.unblock("window")

    def stopProducing(self) -> None:
        """The stream's end is reported through :meth:`gone`."""

    def block(self, why: str) -> None:
        was_blocked = bool(self._blocked)
        self._blocked.add(why)
        if not was_blocked and not self.closed:
            self._handler.pause_writing()

    def unblock(self, why: str) -> None:
        if why in self._blocked:
            self._blocked.discard(why)
            if not self._blocked and not self.closed:
                self._handler.resume_writing()


def open_tunnel(request: ServerRequest, handler: TunnelHandler,
                headers: dict[bytes, bytes]) -> Tunnel:
    """Accept the extended CONNECT ``request``: ``:status 200`` with ``headers``, and the
    stream becomes a :class:`Tunnel` to ``handler``."""
    stream: Any = request.channel
    conn: JMAPH2Connection = stream._conn
    request.setResponseCode(200)
    request.defaultContentType = None
    for name, value in headers.items():
        request.setHeader(name, value)
    request.write(b"")  # the HEADERS frame, without END_STREAM
    tunnel = Tunnel(conn, stream, request, handler)
    stream.registerProducer(tunnel, True)
    conn.attach_tunnel(tunnel)
    return tunnel


def check() -> bool:
    """Whether RFC 8441 can be served on this Twisted and h2 (once; logged if not)."""
    global _checked
    if _checked is None:
        try:
            _checked = _probe()
        except Exception:
            _checked = False
        if not _checked:
            log.warn("WebSocket over HTTP/2 (RFC 8441) is off: the installed Twisted or h2 "
                     "is not what jmappushd expects; HTTP/2 is served without it and "
                     "WebSocket clients use HTTP/1.1")
    return _checked


def _probe() -> bool:
    """Open an extended CONNECT on an in-memory connection and see it handed over."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from jmappushd.net.timerwheel import TimerWheel
    from jmappushd.web.http2 import JMAPH2Connection

    seen: list[bytes | None] = []

    class Probe(Request):
        def process(self) -> None:
            seen.append(connect_protocol(self))

    clock = Clock()
    conn = JMAPH2Connection(clock, TimerWheel(clock), 0, None, extended_connect=True)
    conn.requestFactory = Probe
    conn.site = None
    conn.factory = None
    transport = StringTransport()
    conn.makeConnection(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    settings: list[int] = []
    for event in client.receive_data(transport.value()):
        if isinstance(event, h2.events.RemoteSettingsChanged):
            change = event.changed_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
            if change is not None:
                settings.append(change.new_value)
    client.send_headers(1, [(":method", "CONNECT"), (":protocol", "websocket"),
                            (":scheme", "https"), (":path", "/"), (":authority", "probe")])
    conn.dataReceived(client.data_to_send())
    conn.connectionLost(_probe_done())
    for call in clock.getDelayedCalls():
        call.cancel()
    return settings == [1] and seen == [WEBSOCKET]


def _probe_done() -> Any:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())
