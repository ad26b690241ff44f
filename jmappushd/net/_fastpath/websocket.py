"""Autobahn: the WebSocket frame parser's state and its send queue (the frame fast path
of ``transports/websocket``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.testing import MemoryReactor, StringTransport

if TYPE_CHECKING:
    from autobahn.twisted.websocket import WebSocketServerProtocol


WS_FRAMES = True
"""Whole small client frames may be parsed from the TCP chunk and Autobahn's state read;
set by :func:`jmappushd.net._fastpath.check` (Autobahn is only imported there)."""


def ws_between_frames(proto: WebSocketServerProtocol) -> bool:
    """True when an open connection is between frames with nothing buffered.

    Only then may a whole frame be parsed outside Autobahn: its parser keeps a partly
    received frame in ``current_frame``/``data`` and a fragmented message open in
    ``inside_message``.
    """
    return bool(WS_FRAMES and proto.state == proto.STATE_OPEN
                and proto.current_frame is None and not proto.data
                and not proto.inside_message)


def ws_feed(proto: WebSocketServerProtocol, data: bytes) -> None:
    """Autobahn's ``dataReceived`` without the debug line it formats eagerly per call."""
    if WS_FRAMES:
        proto._dataReceived(data)
    else:
        from autobahn.twisted.websocket import WebSocketAdapterProtocol

        WebSocketAdapterProtocol.dataReceived(proto, data)


def ws_send_direct(proto: WebSocketServerProtocol) -> bool:
    """True when a whole frame may bypass Autobahn's ``sendData`` (nothing queued in it)."""
    return bool(WS_FRAMES and not proto.send_queue)


def ws_count_sent(proto: WebSocketServerProtocol, octets: int) -> None:
    """Count a directly sent frame in Autobahn's traffic statistics, as ``sendData`` does."""
    if proto.state == proto.STATE_OPEN:
        proto.trafficStats.outgoingOctetsWireLevel += octets


def ws_discard_rest(proto: WebSocketServerProtocol) -> None:
    """Make Autobahn drop the rest of any message, as it does when it fails a connection."""
    proto.failedByMe = True


_PROBE_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n")


def probe_ws_frames() -> bool:
    """Autobahn's parser state reads as the WebSocket fast path expects it to.

    A real Autobahn server protocol on a ``StringTransport`` is opened and fed a text
    frame in two parts: between frames it must look idle, inside one it must not, and
    the message must arrive whole; a directly sent frame must be countable.
    """
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    got: list[bytes] = []

    class Probe(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            got.append(payload)

    factory = WebSocketServerFactory(reactor=MemoryReactor())
    factory.protocol = Probe
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                               autoPingInterval=0)
    proto: WebSocketServerProtocol = Probe()
    proto.factory = factory
    proto.makeConnection(StringTransport())
    proto.dataReceived(_PROBE_HANDSHAKE)
    frame = b"\x81\x82\x00\x00\x00\x00ok"  # masked "ok" with a zero key
    opened = ws_between_frames(proto) and ws_send_direct(proto)
    ws_feed(proto, frame[:5])
    inside = not ws_between_frames(proto)
    ws_feed(proto, frame[5:])
    before = proto.trafficStats.outgoingOctetsWireLevel
    ws_count_sent(proto, 3)
    counted = proto.trafficStats.outgoingOctetsWireLevel == before + 3
    return opened and inside and ws_between_frames(proto) and got == [b"ok"] and counted
