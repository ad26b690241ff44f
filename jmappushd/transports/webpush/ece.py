"""Web Push message encryption: RFC 8291 over RFC 8188 "aes128gcm" (ENC-*).

Pure functions with no I/O. :func:`encrypt` is on the per-message hot path, so it
does only what the RFCs require: one ephemeral P-256 key pair, one ECDH, five
HMAC-SHA-256 calls (``hmac.digest`` one-shots, cheaper than the ``HKDF`` class)
and one AES-128-GCM seal. Callers that send many messages to one subscription
should parse its keys once with :func:`parse_subscription_keys` and pass
``ua_public_key`` so the point is not decoded and validated again per message.
The receiving side (decryption) lives with the tests, which need it.
"""

from __future__ import annotations

import hmac
import os

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jmappushd.transports.webpush.b64 import b64url_decode

__all__ = [
    "HEADER_LEN",
    "MAX_BODY",
    "MAX_PLAINTEXT",
    "InvalidKeys",
    "derive_ikm",
    "encrypt",
    "load_p256_point",
    "parse_subscription_keys",
    "public_bytes",
    "seal",
]

MAX_BODY = 4096  # WP-7: a push service may not answer 413 at or below this size
KEY_LEN = 65  # uncompressed P-256 point: 0x04 || X || Y
HEADER_LEN = 16 + 4 + 1 + KEY_LEN  # ENC-4: salt | rs | idlen | keyid = 86
TAG_LEN = 16
MAX_PLAINTEXT = MAX_BODY - HEADER_LEN - TAG_LEN - 1  # ENC-7: 3993
AUTH_LEN = 16
SALT_LEN = 16
MIN_RS = 18  # RFC 8188 §2: smaller record sizes are invalid

_CURVE = ec.SECP256R1()
_ECDH = ec.ECDH()
_KEY_INFO = b"WebPush: info\x00"
_CEK_INFO = b"Content-Encoding: aes128gcm\x00\x01"
_NONCE_INFO = b"Content-Encoding: nonce\x00\x01"
_LAST_RECORD = b"\x02"


class InvalidKeys(ValueError):
    """Subscription ``keys`` that cannot be used for RFC 8291 (PS-2, C-PS-4)."""


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """Return the 65-octet uncompressed X9.62 encoding of a P-256 public key."""
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def load_p256_point(raw: bytes, what: str = "p256dh") -> ec.EllipticCurvePublicKey:
    """Decode a 65-octet uncompressed point, refusing anything not on P-256 (RFC 8291 §7)."""
    if len(raw) != KEY_LEN:
        raise InvalidKeys(f"{what} must be {KEY_LEN} octets (uncompressed P-256 point), "
                          f"got {len(raw)}")
    if raw[0] != 0x04:
        raise InvalidKeys(f"{what} must be an uncompressed point (first octet 0x04)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, raw)
    except ValueError:
        raise InvalidKeys(f"{what} is not a point on P-256") from None


def parse_subscription_keys(
    p256dh: str, auth: str
) -> tuple[ec.EllipticCurvePublicKey, bytes, bytes]:
    """Validate a PushSubscription's ``keys`` (PS-2, C-PS-4).

    Returns ``(public key, raw 65-octet point, 16-octet auth secret)``; raises
    :class:`InvalidKeys` with a message naming the faulty member.
    """
    try:
        raw = b64url_decode(p256dh)
    except ValueError as exc:
        raise InvalidKeys(f"p256dh is not valid base64url: {exc}") from None
    try:
        secret = b64url_decode(auth)
    except ValueError as exc:
        raise InvalidKeys(f"auth is not valid base64url: {exc}") from None
    key = load_p256_point(raw)
    if len(secret) != AUTH_LEN:
        raise InvalidKeys(f"auth must be {AUTH_LEN} octets, got {len(secret)}")
    return key, raw, secret


def derive_ikm(ecdh_secret: bytes, auth_secret: bytes, ua_public: bytes,
               as_public: bytes) -> bytes:
    """RFC 8291 §3.3 (ENC-3 steps 2-4): mix the auth secret into the ECDH secret."""
    prk_key = hmac.digest(auth_secret, ecdh_secret, "sha256")
    return hmac.digest(prk_key, _KEY_INFO + ua_public + as_public + b"\x01", "sha256")


def _cek_nonce(ikm: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """RFC 8188 §2.2-2.3 (ENC-3 steps 5-7); one record, so the nonce is used as is."""
    prk = hmac.digest(salt, ikm, "sha256")
    return (hmac.digest(prk, _CEK_INFO, "sha256")[:16],
            hmac.digest(prk, _NONCE_INFO, "sha256")[:12])


def seal(plaintext: bytes, ikm: bytes, salt: bytes, *, rs: int = 4096,
         keyid: bytes = b"") -> bytes:
    """Encode ``plaintext`` as one RFC 8188 aes128gcm record, header included (ENC-4, ENC-6)."""
    if len(salt) != SALT_LEN:
        raise ValueError(f"salt must be {SALT_LEN} octets")
    if not MIN_RS <= rs < 2**32:
        raise ValueError(f"rs must be in [{MIN_RS}, 2**32)")
    if len(keyid) > 255:
        raise ValueError("keyid longer than 255 octets")
    if len(plaintext) + 1 + TAG_LEN > rs:
        raise ValueError(f"plaintext of {len(plaintext)} octets does not fit one record of rs={rs}")
    cek, nonce = _cek_nonce(ikm, salt)
    record = AESGCM(cek).encrypt(nonce, plaintext + _LAST_RECORD, None)
    return b"%b%b%c%b%b" % (salt, rs.to_bytes(4, "big"), len(keyid), keyid, record)


def encrypt(
    plaintext: bytes,
    ua_public: bytes,
    auth_secret: bytes,
    *,
    rs: int = 4096,
    sender_private: ec.EllipticCurvePrivateKey | None = None,
    salt: bytes | None = None,
    ua_public_key: ec.EllipticCurvePublicKey | None = None,
) -> bytes:
    """Encrypt one push message for a subscription (RFC 8291 §3.3-§4).

    ENC-2: a fresh sender key pair and salt per call unless injected (tests only).
    ENC-5/ENC-7: a single record with ``rs`` greater than plaintext + 17, and a body
    of at most 4096 octets, i.e. at most :data:`MAX_PLAINTEXT` octets of plaintext.
    ``ua_public_key``, if given, must be the parsed form of ``ua_public`` (from
    :func:`parse_subscription_keys`); it saves re-validating the point per message.
    """
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"plaintext of {len(plaintext)} octets exceeds {MAX_PLAINTEXT} (ENC-7)")
    if len(plaintext) + 1 + TAG_LEN >= rs:
        raise ValueError(f"rs={rs} must exceed plaintext + 17 octets (RFC 8291 §4)")
    if len(auth_secret) != AUTH_LEN:
        raise ValueError(f"auth secret must be {AUTH_LEN} octets")
    if ua_public_key is None:
        ua_public_key = load_p256_point(ua_public)
    elif len(ua_public) != KEY_LEN:
        raise ValueError(f"ua_public must be {KEY_LEN} octets")
    if sender_private is None:
        sender_private = ec.generate_private_key(_CURVE)
    as_public = public_bytes(sender_private.public_key())
    ecdh_secret = sender_private.exchange(_ECDH, ua_public_key)
    ikm = derive_ikm(ecdh_secret, auth_secret, ua_public, as_public)
    return seal(plaintext, ikm, os.urandom(SALT_LEN) if salt is None else salt,
                rs=rs, keyid=as_public)
