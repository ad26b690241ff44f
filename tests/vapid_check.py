"""The push service's side of VAPID (RFC 8292 §4.2): header parsing and JWT checks.

For tests and the test push service only; the daemon signs and never verifies.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from jmappushd.transports.webpush.b64 import b64url_decode
from jmappushd.transports.webpush.ece import load_p256_point
from jmappushd.transports.webpush.vapid import MAX_LIFETIME


def parse_vapid_header(header: str) -> tuple[str, str]:
    """Split ``vapid t=..., k=...`` into (token, key); unknown parameters are ignored (VAPID-1)."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError("authorization scheme is not vapid")
    params: dict[str, str] = {}
    for item in rest.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name:
            raise ValueError(f"malformed auth-param {item.strip()!r}")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name in params:
            raise ValueError(f"repeated parameter {name!r}")
        params[name] = value
    if "t" not in params or "k" not in params:
        raise ValueError("vapid authorization needs both t and k")
    return params["t"], params["k"]


def _json_object(segment: str, what: str) -> dict[str, Any]:
    """Decode one base64url JSON object segment of a JWT."""
    value = json.loads(b64url_decode(segment))
    if not isinstance(value, dict):
        raise ValueError(f"JWT {what} is not a JSON object")
    return value


def verify_vapid_header(header: str, now: float, *, audience: str | None = None) -> dict[str, Any]:
    """Verify a VAPID header as a push service would (RFC 8292 §4.2); return the claims.

    Checks the ES256 signature against ``k`` (VAPID-2), that ``exp`` is an integer
    with ``now <= exp <= now + 24 h`` (VAPID-4), and ``aud`` when ``audience`` is
    given (VAPID-3). Raises ValueError on any failure.
    """
    token, k = parse_vapid_header(header)
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("JWT must have three segments")
    jose = _json_object(parts[0], "header")
    if jose.get("alg") != "ES256" or str(jose.get("typ", "JWT")).upper() != "JWT":
        raise ValueError("JWT header must be typ JWT, alg ES256")
    signature = b64url_decode(parts[2])
    if len(signature) != 64:
        raise ValueError("ES256 signature must be 64 octets (R||S)")
    public = load_p256_point(b64url_decode(k), "k")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                               int.from_bytes(signature[32:], "big"))
    try:
        public.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(SHA256()))
    except InvalidSignature:
        raise ValueError("VAPID signature does not verify") from None
    claims = _json_object(parts[1], "claims")
    _check_claims(claims, now, audience)
    return claims


def _check_claims(claims: dict[str, Any], now: float, audience: str | None) -> None:
    """VAPID-3, VAPID-4: an integer ``exp`` within 24 h, and the expected ``aud``."""
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise ValueError("exp claim missing or not an integer")
    if now > exp:
        raise ValueError("VAPID token expired")
    if exp - now > MAX_LIFETIME:
        raise ValueError("VAPID token exp more than 24 hours ahead")
    if not isinstance(claims.get("aud"), str):
        raise ValueError("aud claim missing")
    if audience is not None and claims["aud"] != audience:
        raise ValueError(f"aud {claims['aud']!r} does not match {audience!r}")
