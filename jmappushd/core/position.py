"""Resumption tokens: opaque, small, per user, valid across restarts (ES-9, WS-19, C-ES-4).

A token names a position in the store's durable change sequence. It used to show that
position (and so how often *any* account changed); now it is sealed with AES-SIV
(RFC 5297, deterministic authenticated encryption) under a key generated once and
kept in the store's metadata, so it survives restarts and every daemon on the same
store can open it. The associated data binds it to the format version, the store's
epoch and the user: a token of another user, another store or epoch, a forged one
or an old ``<epoch>-<seq>`` one fails to open, and the caller answers it with a
full-state resync, as for any unknown token.

A random nonce (RFC 5297 §3's nonce-based use) makes each sealing look unrelated to
every other: with a deterministic token, a client asking for a resync again and
again could compare the tokens it gets and learn whether anything changed anywhere.
Fan-out seals once per (user, position) through :meth:`ResumptionTokens.shared`, so
10,000 streams of one user cost one sealing per change, not 10,000.

Wire form: base64url without padding of nonce (8) || SIV tag (16) || position (8,
encrypted), 43 characters, the same for EventSource ``id:`` and ``pushState``.

The associated data is one string, format version || epoch length || epoch || user ||
nonce (the nonce's fixed length at the end and the epoch's length prefix make it
unambiguous): S2V runs one CMAC per component, and with one component instead of the
first format's four a whole seal took 2.8 instead of 4.3 us in process (study 12). Tokens
of that first format (version, epoch, user and nonce as separate components) still
open, so an upgrade makes no client resynchronise.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from jmappushd.store.interface import IMetadataStore

KEY_META = "resumption-token-key"
"""The metadata key under which the store keeps the sealing key (base64url, 64 bytes)."""

KEY_BYTES = 64  # AES-256-SIV (RFC 5297 with two 256-bit AES keys)
NONCE_BYTES = 8
POSITION_BYTES = 8
TOKEN_BYTES = NONCE_BYTES + 16 + POSITION_BYTES
TOKEN_LENGTH = (TOKEN_BYTES * 8 + 5) // 6  # 43 base64url characters
NONCE_BUFFER = 4096
SHARED_OWNERS = 65536
"""Users whose newest shared token is remembered; beyond that the oldest is forgotten."""

_VERSION = b"jmappushd resumption token 2"
_VERSION_1 = b"jmappushd resumption token 1"  # four components; opened, never sealed
_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{{TOKEN_LENGTH}}}")
_MAX_POSITION = (1 << (8 * POSITION_BYTES)) - 1


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 §5), in one pass over the standard alphabet."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE, b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ResumptionTokens:
    """Seals and opens the tokens of one store (key) and epoch; see the module docstring."""

    __slots__ = ("_cipher", "_epoch", "_max_shared", "_nonces", "_prefix", "_shared",
                 "_taken")

    def __init__(self, key: bytes, epoch: str, max_shared: int = SHARED_OWNERS) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a resumption-token key has {KEY_BYTES} bytes, not {len(key)}")
        self._cipher = AESSIV(key)
        self._epoch = epoch.encode("utf-8")
        if len(self._epoch) > 0xFFFF:
            raise ValueError("a store epoch is at most 65,535 bytes")
        self._prefix = _VERSION + len(self._epoch).to_bytes(2, "big") + self._epoch
        self._max_shared = max_shared
        self._shared: dict[str, tuple[int, str]] = {}
        self._nonces = b""
        self._taken = 0

    def seal(self, owner: str, position: int) -> str:
        """A new token for ``position`` that only ``owner`` can use (a fresh nonce)."""
        if not 0 <= position <= _MAX_POSITION:
            raise ValueError(f"position {position} is out of range")
        # Nonces come from a buffer of the system's randomness: one read per
        # NONCE_BUFFER // NONCE_BYTES tokens instead of a system call for each.
        taken = self._taken
        if taken >= len(self._nonces):
            self._nonces, taken = os.urandom(NONCE_BUFFER), 0
        self._taken = taken + NONCE_BYTES
        nonce = self._nonces[taken:taken + NONCE_BYTES]
        sealed = self._cipher.encrypt(
            position.to_bytes(POSITION_BYTES, "big"),
            [self._prefix + owner.encode("utf-8", "surrogatepass") + nonce])
        return _b64encode(nonce + sealed)

    def shared(self, owner: str, position: int) -> str:
        """The token every listener of ``owner`` gets for the change at ``position``.

        Fan-out hands one change to all of a user's streams in one go, so remembering
        the newest position per user is enough to seal once per change.
        """
        cached = self._shared.get(owner)
        if cached is not None and cached[0] == position:
            return cached[1]
        token = self.seal(owner, position)
        shared = self._shared
        if cached is None and len(shared) >= self._max_shared:
            del shared[next(iter(shared))]  # the longest-remembered user
        shared[owner] = (position, token)
        return token

    def open(self, owner: str, token: str | None) -> int | None:
        """The position ``token`` stands for, or None if ``owner`` cannot use it.

        Never raises: absent, malformed, forged, old-format tokens, those of other
        users, other keys or other epochs all give None (a full-state resync).
        """
        if not token or not _TOKEN.fullmatch(token):
            return None
        try:
            raw = _b64decode(token)
        except (binascii.Error, ValueError):
            return None
        nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
        user = owner.encode("utf-8", "surrogatepass")
        try:
            plain = self._cipher.decrypt(sealed, [self._prefix + user + nonce])
        except InvalidTag:
            try:  # a token of the first format, sealed before an upgrade
                plain = self._cipher.decrypt(sealed, [_VERSION_1, self._epoch, user, nonce])
            except InvalidTag:
                return None
        return int.from_bytes(plain, "big") if len(plain) == POSITION_BYTES else None


class NotStarted(ResumptionTokens):
    """Stands in until the key is loaded: any use is a bug (it would mint throw-away
    tokens), so it raises. A plain attribute with this placeholder keeps the fan-out
    path free of a property call."""

    __slots__ = ()

    def __init__(self) -> None:  # no key, no cipher: nothing may be sealed yet
        pass

    def seal(self, owner: str, position: int) -> str:
        raise RuntimeError("the hub has not started: no resumption tokens yet")

    shared = seal

    def open(self, owner: str, token: str | None) -> int | None:
        raise RuntimeError("the hub has not started: no resumption tokens yet")


def new_key() -> bytes:
    """A fresh random sealing key."""
    return os.urandom(KEY_BYTES)


async def load_key(meta: IMetadataStore) -> bytes:
    """The store's sealing key, generated and stored the first time (one winner among
    daemons starting together on one store). A damaged value fails the start."""
    stored = await meta.add_meta(KEY_META, _b64encode(new_key()))
    try:
        key = _b64decode(stored)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(f"the store's {KEY_META!r} metadata is not a {KEY_BYTES}-byte "
                         "base64url key; remove it to generate a new one (every client "
                         "then resynchronises once)")
    return key
