"""WebSocket frames handled directly (RFC 6455 §5.2), both ways.

Out: a StateChange goes to many connections as the same bytes. With no extension
negotiated (permessage-deflate is declined) and no masking from a server, the
frame is a fixed header plus the payload, so it is built once per change and
written as-is to every connection.

In: :func:`take_simple` reads the frames a JMAP client mostly sends (whole, small,
masked text frames and pongs) straight from received bytes, for the HTTP/1.1
(Autobahn) and HTTP/2 (wsproto) sessions alike; anything else is left to the library.
"""

from __future__ import annotations

import struct

from jmappushd.core.hub import StateMap
from jmappushd.transports.websocket.messages import encode_state_change

FIN_TEXT = 0x81
"""First octet of a final text frame."""
FIN_PONG = 0x8A
"""First octet of a final Pong frame."""
PING_FRAME = b"\x89\x00"
"""The heartbeat: a final Ping frame with no payload (RFC 6455 §5.5.2), always the same."""

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying ``payload`` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        head = _SHORT.pack(FIN_TEXT, n)
    elif n < 65536:
        head = _MEDIUM.pack(FIN_TEXT, 126, n)
    else:
        head = _LONG.pack(FIN_TEXT, 127, n)
    return head + payload


def state_change_frame(changed: StateMap, token: str) -> bytes:
    """A pushed StateChange with ``pushState`` ``token``, framed (WS-19)."""
    return text_frame(encode_state_change(changed, token))


def take_simple(data: bytes, pos: int, cap: int) -> tuple[int, bytes | None] | None:
    """The frame at ``pos`` if it is one the fast path takes: ``(end, payload)``, with
    ``payload`` None for a pong (dropped); None to leave it and the rest to the library.

    Taken: a final masked text frame within ``cap`` (unmasked per §5.3, valid UTF-8
    per §8.1) and a final masked pong of at most 125 octets. Left: fragments, pings,
    close, binary, reserved bits, unmasked, oversized, incomplete or non-minimally
    encoded frames, 64-bit lengths, invalid UTF-8: the library then answers them as it
    would have (1002, 1007, ...), whatever way the bytes were split.
    """
    size = len(data)
    if size - pos < 6:
        return None
    first, second = data[pos], data[pos + 1]
    if second < 0x80 or (first != FIN_TEXT and first != FIN_PONG):
        return None
    length = second & 0x7F
    key_at = pos + 2
    if length == 126:
        if size - pos < 8 or first == FIN_PONG:
            return None  # a control frame > 125 octets: the library closes 1002 (§5.5)
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 126:
            return None  # not the minimal length encoding: 1002 (§5.2)
        key_at = pos + 4
    elif length == 127:
        return None
    end = key_at + 4 + length
    if end > size or length > cap:
        return None
    if first == FIN_PONG:
        return end, None
    key = data[key_at : key_at + 4] * (length // 4 + 1)
    payload = (int.from_bytes(data[key_at + 4 : end], "big")
               ^ int.from_bytes(key[:length], "big")).to_bytes(length, "big")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return None  # the library closes with 1007
    return end, payload
