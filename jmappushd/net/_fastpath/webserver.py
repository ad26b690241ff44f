"""twisted.web's server side: one chunk of a chunked response, a whole response in one
``send()``."""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.web import http

from jmappushd.net._fastpath.tcpwrite import Null, loopback_pair, tcp_idle_socket

CHUNK_WRITE = all(hasattr(http.Request, a)
                  for a in ("chunked", "startedWriting", "finished", "_disconnected",
                            "sentLength"))
"""An EventSource event may be framed as one HTTP/1.1 chunk and sent at once."""


WHOLE_RESPONSE = all(hasattr(http.HTTPChannel, a) for a in ("writeHeaders", "write"))
"""A response whose body is written in one call may leave as one ``send()``: what
``Request.write`` gives the channel's transport is gathered and sent at once."""


def chunk_transport(request: http.Request, data: bytes) -> Any:
    """The transport to send ``data`` on as a whole chunk, or ``None`` for ``Request.write``.

    Reproduces ``Request.write`` once the headers are out in chunked mode: it counts
    ``sentLength`` and writes ``toChunk(data)``. The caller sends :func:`chunk` itself
    so the chunk leaves at once instead of on the next reactor turn.
    """
    if (CHUNK_WRITE and data and request.chunked and request.startedWriting
            and not request.finished and not request._disconnected):
        request.sentLength += len(data)
        return request.channel.transport
    return None


def chunk(data: bytes) -> bytes:
    """HTTP/1.1 chunk framing, byte for byte ``twisted.web.http.toChunk``."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def raw_transport(request: http.Request) -> Any:
    """The connection's transport, for a response written before the request is parsed.

    ``HTTPChannel`` answers malformed requests the same way (a complete response
    straight to the transport, then ``loseConnection``); ``Request.write`` cannot,
    since it needs the request line that has not been parsed yet. Only public
    attributes (``Request.channel``, ``Protocol.transport``) are read.
    """
    channel = request.channel
    return channel.transport if channel is not None else None


class _Gathered:
    """Stands in for a channel's transport while ``Request.write`` runs: the bytes it is
    given are kept in order; anything else is the real transport's."""

    __slots__ = ("parts", "real")

    def __init__(self, real: object) -> None:
        self.real = real
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.parts.extend(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def whole_response(request: http.Request, body: bytes) -> tuple[Any, bytes] | None:
    """The TCP transport and the bytes of a whole response, or ``None`` for ``Request.write``.

    For the first and only write of a response with its ``Content-Length`` set: runs
    ``Request.write(body)`` itself with the channel's transport standing aside, so the
    status line, headers and body are Twisted's own bytes, gathered instead of queued.
    The caller sends them at once (``send_now``): one ``send()`` and no trip through the
    reactor's write set (two ``epoll_ctl`` calls and a poll per response otherwise).
    Only on a plain TCP connection with nothing queued; TLS, HTTP/2 and a busy
    connection keep Twisted's path.
    """
    channel = request.channel
    if (not WHOLE_RESPONSE or request.startedWriting or request.finished
            or request._disconnected or not isinstance(channel, http.HTTPChannel)
            or tcp_idle_socket(channel.transport) is None):
        return None
    transport = channel.transport
    gathered = _Gathered(transport)
    channel.transport = gathered  # type: ignore[assignment]
    try:
        request.write(body)
    finally:
        channel.transport = transport
    return transport, b"".join(gathered.parts)


def probe_chunk_write() -> bool:
    """Our framing of a second write equals ``Request.write``'s, and so does its count."""
    public, fast = _started_request(), _started_request()
    wire_of = public.channel.transport
    assert isinstance(wire_of, StringTransport)
    before = wire_of.value()
    public.write(b"event")
    wire = wire_of.value()[len(before):]
    transport = chunk_transport(fast, b"event")
    if transport is None:
        return False
    transport.write(chunk(b"event"))
    return (wire == chunk(b"event") == transport.value()[len(before):]
            and public.sentLength == fast.sentLength)


def probe_whole_response() -> bool:
    """Gathered, a whole response is byte for byte what ``Request.write`` queues, and
    the request and channel are left as ``Request.write`` leaves them."""
    ours, theirs = loopback_pair()
    try:
        requests = []
        for transport in (StringTransport(), tcp.Server(
                ours, Null(), ("127.0.0.1", 1), None, 0,  # type: ignore[arg-type]
                MemoryReactor())):
            channel = http.HTTPChannel()
            channel.timeOut = None
            channel.makeConnection(transport)
            request = http.Request(channel)
            request.clientproto, request.method = b"HTTP/1.1", b"POST"
            request.setResponseCode(202)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"2")
            requests.append(request)
        public, fast = requests
        public.write(b"{}")
        wire_of = public.channel.transport
        assert isinstance(wire_of, StringTransport)
        got = whole_response(fast, b"{}")
        return (got is not None and got[1] == wire_of.value()
                and got[0] is fast.channel.transport
                and fast.startedWriting == public.startedWriting
                and fast.sentLength == public.sentLength and not fast.chunked)
    finally:
        ours.close()
        theirs.close()


def _started_request() -> http.Request:
    """A GET over HTTP/1.1 whose headers and first chunk are written."""
    channel = http.HTTPChannel()
    channel.timeOut = None
    channel.makeConnection(StringTransport())
    request = http.Request(channel)
    request.clientproto, request.method = b"HTTP/1.1", b"GET"
    request.write(b"first")
    return request
