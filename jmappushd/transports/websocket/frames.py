"""Server-to-client WebSocket frames built directly (RFC 6455 §5.2).

A StateChange goes to many connections as the same bytes. With no extension
negotiated (permessage-deflate is declined) and no masking from a server, the
frame is a fixed header plus the payload, so it is built once per change and
written as-is to every connection.
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
