"""wsproto: the frame parser's state (a WebSocket over HTTP/2)."""

from __future__ import annotations

from typing import Any

WSPROTO_FRAMES = True
"""Whole small client frames may be parsed from an HTTP/2 DATA payload when wsproto's
parser state reads as between frames; set by :func:`jmappushd.net._fastpath.check`."""


def wsproto_between_frames(ws: Any) -> bool:
    """True when the open wsproto ``Connection`` ``ws`` holds nothing: no event not yet
    taken, no byte of a partly received frame, no fragmented message open.

    Only then may a whole frame be parsed outside wsproto: its ``FrameDecoder`` keeps a
    partial header or payload in ``header``/``buffer``, its ``MessageDecoder`` the
    opcode (and UTF-8 state) of a fragmented message in ``opcode``.
    """
    if not WSPROTO_FRAMES:
        return False
    proto = ws._proto
    decoder = proto._frame_decoder
    return bool(decoder.header is None and not decoder.buffer.buffer
                and proto._message_decoder.opcode is None and not ws._events)


def probe_wsproto_frames() -> bool:
    """wsproto's parser state reads as the HTTP/2 WebSocket fast path expects it to.

    A server ``Connection`` is fed a masked text frame in two parts (idle before, not
    idle inside, idle after, the message whole), then the first frame of a fragmented
    message (not idle until its last frame has passed).
    """
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    ws = Connection(ConnectionType.SERVER)
    frame = b"\x81\x82\x00\x00\x00\x00ok"  # masked "ok" with a zero key
    idle = wsproto_between_frames(ws)
    ws.receive_data(frame[:5])
    partial = list(ws.events())
    inside = not wsproto_between_frames(ws)
    ws.receive_data(frame[5:])
    got = [e.data for e in ws.events() if isinstance(e, TextMessage) and e.message_finished]
    after = wsproto_between_frames(ws)
    ws.receive_data(b"\x01\x81\x00\x00\x00\x00o")  # not final
    list(ws.events())
    fragmented = not wsproto_between_frames(ws)
    ws.receive_data(b"\x80\x81\x00\x00\x00\x00k")  # its final continuation
    list(ws.events())
    return (idle and not partial and inside and got == ["ok"] and after and fragmented
            and wsproto_between_frames(ws))
