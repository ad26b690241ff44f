"""VAPID (RFC 8292) signing for Web Push, as RFC 9749 requires for JMAP (VAPID-*).

:class:`VapidKey` is the daemon's P-256 signing key; :class:`VapidSigner` builds the
``Authorization: vapid t=<JWT>, k=<key>`` header and caches one token per push
service origin (C-V-1, VAPID-9), so the per-message cost is a URL split and a
dictionary look-up. The receiving side (verifying a header) lives with the tests.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from twisted.internet.interfaces import IReactorTime

from jmappushd.transports.webpush.b64 import b64url_decode, b64url_encode
from jmappushd.transports.webpush.ece import public_bytes

__all__ = [
    "MAX_LIFETIME",
    "OriginCache",
    "VapidKey",
    "VapidSigner",
    "origin_of",
]

MAX_LIFETIME = 24 * 3600  # VAPID-4: exp at most 24 h after the request
_CURVE = ec.SECP256R1()
_ECDSA = ec.ECDSA(SHA256())
# Order of the P-256 group: a private scalar must lie in [1, N-1].
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_JWT_HEADER = b64url_encode(b'{"typ":"JWT","alg":"ES256"}')  # VAPID-2
_DEFAULT_PORTS = {"https": 443, "http": 80}


class VapidKey:
    """A P-256 ECDSA key pair for VAPID; the public half is the ``applicationServerKey``."""

    __slots__ = ("_key_id", "_private", "_public_b64", "_public_raw")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("VAPID keys must be on P-256 (RFC 8292 §3.2)")
        self._private = private_key
        self._public_raw = public_bytes(private_key.public_key())
        self._public_b64 = b64url_encode(self._public_raw)
        self._key_id = b64url_encode(hashlib.sha256(self._public_raw).digest())[:16]

    @classmethod
    def generate(cls) -> VapidKey:
        """Make a new random key (first start, or key rotation)."""
        return cls(ec.generate_private_key(_CURVE))

    @classmethod
    def from_private_string(cls, s: str) -> VapidKey:
        """Load our storage format: base64url of the 32-octet big-endian private scalar."""
        raw = b64url_decode(s.strip())
        if len(raw) != 32:
            raise ValueError(f"VAPID private key must be 32 octets, got {len(raw)}")
        value = int.from_bytes(raw, "big")
        if not 0 < value < _P256_N:
            raise ValueError("VAPID private key is out of range for P-256")
        return cls(ec.derive_private_key(value, _CURVE))

    def to_private_string(self) -> str:
        """Serialise the private scalar for the store (secret: never log it)."""
        return b64url_encode(self._private.private_numbers().private_value.to_bytes(32, "big"))

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The signing key."""
        return self._private

    @property
    def public_key_raw(self) -> bytes:
        """The 65-octet uncompressed public point."""
        return self._public_raw

    @property
    def public_key_b64(self) -> str:
        """The 87-character base64url public point: JWT ``k`` and session key (SES-15, VAPID-1)."""
        return self._public_b64

    @property
    def key_id(self) -> str:
        """A short stable id stored with each subscription to tie it to this key (PS-24)."""
        return self._key_id

    def sign(self, data: bytes) -> bytes:
        """ES256-sign ``data``; returns the 64-octet R||S form JWS wants, not DER (VAPID-2)."""
        r, s = decode_dss_signature(self._private.sign(data, _ECDSA))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"<VapidKey {self._key_id}>"


def origin_of(url: str) -> str:
    """The ASCII origin ``scheme://host[:port]`` of a URL, default port omitted (VAPID-3).

    Push URLs are ASCII in practice; the host is lowercased and kept in its ASCII
    (punycode) form, which is what push services compare ``aud`` against.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not parts.scheme or not host:
        raise ValueError(f"URL has no origin: {url!r}")
    port = parts.port  # ValueError if not a valid port number
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


class OriginCache:
    """``origin_of(url)``, remembered per ``scheme://authority`` text; bounded.

    Parsing a URL costs as much as the rest of a VAPID header, and a slot is looked up
    by origin for every POST; every push to one push service starts with the same
    authority, and the origin depends on nothing after it (the path, where push
    services keep their secrets, is not kept). A URL with no origin raises
    ``ValueError`` as :func:`origin_of` does, and is not remembered.
    """

    __slots__ = ("_max", "_origins")

    def __init__(self, max_origins: int) -> None:
        self._max = max_origins
        self._origins: dict[str, str] = {}

    def __call__(self, url: str) -> str:
        start = url.find("://")
        if start < 0:
            return origin_of(url)
        end = len(url)
        for separator in "/?#":
            at = url.find(separator, start + 3)
            if 0 <= at < end:
                end = at
        prefix = url[:end]
        origin = self._origins.get(prefix)
        if origin is None:
            origin = origin_of(url)
            if len(self._origins) >= self._max:
                self._origins.clear()
            self._origins[prefix] = origin
        return origin


class VapidSigner:
    """Builds VAPID ``Authorization`` headers for one key, caching a token per origin.

    C-V-1 / VAPID-9: a token lives ``lifetime`` seconds and is reused until less than
    ``renew_before`` remains; the cache is an LRU bounded to ``max_origins``.
    VAPID-4: ``exp - now`` never exceeds ``lifetime`` (<= 24 h), even if the clock
    steps backwards.
    """

    def __init__(
        self,
        key: VapidKey,
        clock: IReactorTime,
        subject: str = "",
        lifetime: int = 12 * 3600,
        renew_before: int = 3600,
        *,
        max_origins: int = 10_000,
    ) -> None:
        if not 0 < lifetime <= MAX_LIFETIME:
            raise ValueError(f"VAPID token lifetime must be in (0, {MAX_LIFETIME}] seconds")
        if not 0 <= renew_before < lifetime:
            raise ValueError("renew_before must be in [0, lifetime)")
        if subject and not subject.startswith(("mailto:", "https:")):
            raise ValueError("VAPID subject must be a mailto: or https: URI (VAPID-5)")
        if max_origins < 1:
            raise ValueError("max_origins must be positive")
        self._key = key
        self._clock = clock
        self._subject = subject
        self._lifetime = lifetime
        self._renew_before = renew_before
        self._max_origins = max_origins
        self._cache: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._origin = OriginCache(max_origins)

    @property
    def key(self) -> VapidKey:
        """The key this signer signs with (the one advertised with the subscription)."""
        return self._key

    def authorization(self, url: str) -> str:
        """The ``Authorization`` header value for a POST to ``url`` (VAPID-1, VAPID-12)."""
        origin = self._origin(url)
        now = self._clock.seconds()
        cached = self._cache.get(origin)
        if cached is not None:
            exp, header = cached
            if self._renew_before <= exp - now <= self._lifetime:
                self._cache.move_to_end(origin)
                return header
        exp = int(now) + self._lifetime
        header = f"vapid t={self._token(origin, exp)}, k={self._key.public_key_b64}"
        self._cache[origin] = (exp, header)
        self._cache.move_to_end(origin)
        if len(self._cache) > self._max_origins:
            self._cache.popitem(last=False)
        return header

    def _token(self, origin: str, exp: int) -> str:
        """Sign a compact JWS with claims aud, exp and optional sub (VAPID-2..5)."""
        claims: dict[str, Any] = {"aud": origin, "exp": exp}
        if self._subject:
            claims["sub"] = self._subject
        payload = b64url_encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        signing_input = f"{_JWT_HEADER}.{payload}"
        return f"{signing_input}.{b64url_encode(self._key.sign(signing_input.encode('ascii')))}"
