"""Resumption tokens: opaque, small, and valid across restarts.

A token names a position in the store's durable change sequence plus the store's
epoch, so a token from another store (or from before a reset) is recognised as
unknown and answered with a full-state resync instead of a wrong delta. The same
format is used for EventSource ``id:`` lines and WebSocket ``pushState``.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^([A-Za-z0-9_-]{1,64})-([0-9a-z]{1,14})$")


def make_token(epoch: str, seq: int) -> str:
    """Encode ``(epoch, seq)`` as ``<epoch>-<seq in base 36>``."""
    return f"{epoch}-{_base36(seq)}"


def parse_token(token: str | None, epoch: str, current_seq: int) -> int | None:
    """Return the sequence number a token stands for, or None if it is unusable.

    Unusable means: absent, malformed, from another epoch, or from the future
    (a position this store never reached).
    """
    if not token:
        return None
    match = _TOKEN.match(token.strip())
    if match is None or match.group(1) != epoch:
        return None
    seq = int(match.group(2), 36)
    if seq > current_seq:
        return None
    return seq


def _base36(number: int) -> str:
    if number < 0:
        raise ValueError("sequence numbers are never negative")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out
