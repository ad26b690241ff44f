"""URL-safe base64 without padding (RFC 4648 §5, RFC 7515 §2).

Web Push keys, VAPID keys and JWT segments all use this alphabet; browsers send
them unpadded, some libraries pad them, so decoding accepts both (C-PS-4) but is
otherwise strict: no standard-alphabet ``+``/``/``, no whitespace, no bad padding.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["b64url_decode", "b64url_encode"]

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """Encode ``data`` as base64url with the ``=`` padding stripped."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url, padded or not; raise ValueError on anything malformed."""
    if not isinstance(text, str):
        raise ValueError("base64url value must be a string")
    body = text.rstrip("=")
    padding = len(text) - len(body)
    if padding and (padding > 2 or len(text) % 4):
        raise ValueError("invalid base64url padding")
    if not _ALPHABET.fullmatch(body):
        raise ValueError("invalid base64url character")
    if len(body) % 4 == 1:
        raise ValueError("invalid base64url length")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise ValueError(f"invalid base64url: {exc}") from None
