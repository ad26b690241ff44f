"""The user agent's side of RFC 8291/8188 "aes128gcm": our own decryptor, for tests only.

The product only encrypts. Tests check its output with the independent ``http_ece``
package and, for the error paths http_ece does not reach, with these functions.
The key schedule is written out again here (not imported from the sender) so a slip
in the sender's derivation cannot cancel itself out.
"""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jmappushd.transports.webpush.ece import derive_ikm, load_p256_point, public_bytes

KEY_LEN = 65  # the sender's uncompressed P-256 point in the keyid (ENC-4)
TAG_LEN = 16
MIN_RS = 18  # RFC 8188 §2: smaller record sizes are invalid


def cek_nonce(ikm: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """RFC 8188 §2.2-2.3: the content encryption key and the (single record's) nonce."""
    prk = hmac.digest(salt, ikm, "sha256")
    return (hmac.digest(prk, b"Content-Encoding: aes128gcm\x00\x01", "sha256")[:16],
            hmac.digest(prk, b"Content-Encoding: nonce\x00\x01", "sha256")[:12])


def split(body: bytes) -> tuple[bytes, int, bytes, bytes]:
    """Parse an aes128gcm body into (salt, rs, keyid, the single record)."""
    if len(body) < 21:
        raise ValueError("body shorter than the aes128gcm header")
    rs = int.from_bytes(body[16:20], "big")
    end = 21 + body[20]
    if rs < MIN_RS:
        raise ValueError(f"invalid record size {rs}")
    record = body[end:]
    if len(record) > rs:
        raise ValueError("more than one record is not supported (RFC 8291 §4)")
    if len(record) < TAG_LEN + 1:
        raise ValueError("record too short")
    return body[:16], rs, body[21:end], record


def open_record(record: bytes, ikm: bytes, salt: bytes) -> bytes:
    """Decrypt a final record and strip its padding (ENC-6: delimiter must be 0x02)."""
    cek, nonce = cek_nonce(ikm, salt)
    try:
        padded = AESGCM(cek).decrypt(nonce, record, None)
    except InvalidTag:
        raise ValueError("authentication tag mismatch") from None
    data = padded.rstrip(b"\x00")
    if not data or data[-1:] != b"\x02":
        raise ValueError("last record delimiter is not 0x02")
    return data[:-1]


def unseal(body: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Decode a single-record RFC 8188 body with a known IKM; returns (plaintext, keyid)."""
    salt, _rs, keyid, record = split(body)
    return open_record(record, ikm, salt), keyid


def decrypt(body: bytes, ua_private: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """Decrypt a Web Push body as the user agent would (RFC 8291 §3.4)."""
    salt, _rs, keyid, record = split(body)
    if len(keyid) != KEY_LEN:
        raise ValueError(f"keyid must be the {KEY_LEN}-octet sender key (ENC-4)")
    as_key = load_p256_point(keyid, "keyid")
    ecdh_secret = ua_private.exchange(ec.ECDH(), as_key)
    ikm = derive_ikm(ecdh_secret, auth_secret, public_bytes(ua_private.public_key()), keyid)
    return open_record(record, ikm, salt)
