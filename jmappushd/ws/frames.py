"""Server-to-client WebSocket frames built directly (RFC 6455 §5.2).

A StateChange goes to many connections as the same bytes. With no extension
negotiated (permessage-deflate is declined) and no masking from a server, the
frame is a fixed header plus the payload, so it is built once per change and
written as-is to every connection.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying ``payload`` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        head = _SHORT.pack(_FIN_TEXT, n)
    elif n < 65536:
        head = _MEDIUM.pack(_FIN_TEXT, 126, n)
    else:
        head = _LONG.pack(_FIN_TEXT, 127, n)
    return head + payload
