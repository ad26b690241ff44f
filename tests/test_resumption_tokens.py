"""Resumption tokens (core/position.py): opaque, per user, per store, small, durable.

ES-9, ES-10, WS-19, C-ES-3, C-ES-4, C-WS-8: a token is an EventSource id and a
WebSocket pushState; one the user cannot open is answered with a full-state resync.
"""

from __future__ import annotations

import base64
import re
import timeit
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from twisted.internet import defer

from jmappushd.core import position as position_module
from jmappushd.core.hub import Hub
from jmappushd.core.position import (
    KEY_BYTES,
    KEY_META,
    TOKEN_LENGTH,
    ResumptionTokens,
    load_key,
    new_key,
)
from jmappushd.store.memory import MemoryStore
from jmappushd.store.sqlite import SQLiteStore
from tests.store_backends import fired, open_memory_store

KEY = bytes(range(KEY_BYTES))
BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def tokens(key: bytes = KEY, epoch: str = "ep1") -> ResumptionTokens:
    return ResumptionTokens(key, epoch)


def test_a_token_opens_to_its_position_for_its_user_only() -> None:
    """The user who got a token can resume from it; another user, another key (another
    deployment) or another epoch (a recreated store) cannot: None means full resync."""
    token = tokens().seal("alice", 1295)
    assert tokens().open("alice", token) == 1295
    assert tokens().open("bob", token) is None
    assert tokens(key=new_key()).open("alice", token) is None
    assert tokens(epoch="ep2").open("alice", token) is None


def test_tokens_are_small_and_url_safe() -> None:
    """A token is 43 base64url characters whatever the position: fits an SSE id line and
    a pushState, and its length tells nothing about the position."""
    t = tokens()
    for position in (0, 1, 36, 10**6, 2**63):
        token = t.seal("u-" + "x" * 200, position)
        assert len(token) == TOKEN_LENGTH == 43 and BASE64URL.fullmatch(token)
        assert t.open("u-" + "x" * 200, token) == position


def test_tokens_do_not_show_the_position_or_repeat() -> None:
    """Opaque: consecutive positions give unrelated tokens, and sealing the same position
    twice gives two different tokens, so comparing resync tokens shows nothing about how
    often other accounts changed. Both still open to the position."""
    t = tokens()
    first, again, next_one = t.seal("alice", 41), t.seal("alice", 41), t.seal("alice", 42)
    assert len({first, again, next_one}) == 3
    assert t.open("alice", first) == t.open("alice", again) == 41


def test_buffered_nonces_never_repeat_across_refills() -> None:
    """Nonces are taken from a buffer of system randomness; across several refills no
    nonce repeats and every token still opens, and the encoding is RFC 4648 §5
    base64url without padding (the same text as the standard library's)."""
    t = tokens()
    count = 3 * position_module.NONCE_BUFFER // position_module.NONCE_BYTES + 5
    sealed = [t.seal("alice", n) for n in range(count)]
    raw = [base64.urlsafe_b64decode(token + "=") for token in sealed]
    assert len({r[:position_module.NONCE_BYTES] for r in raw}) == count
    assert [t.open("alice", token) for token in sealed] == list(range(count))
    assert all(base64.urlsafe_b64encode(r).rstrip(b"=").decode() == token
               for r, token in zip(raw, sealed, strict=True))


@pytest.mark.parametrize("junk", [
    None, "", "garbage", "ep1-1", "ep1-zz", "e" * 43, "A" * 42, "A" * 44, "=" * 43,
    "\uff21" * 43, "\x00" * 43, "-" * 43, "x" * 10_000, "é" * 43,
])
def test_unusable_tokens_open_to_none_and_never_raise(junk: str | None) -> None:
    """Old-format ``<epoch>-<seq>`` ids, garbage, non-ASCII and oversized strings are
    unknown tokens, never an exception (the caller resyncs)."""
    assert tokens().open("alice", junk) is None


def _unsealed(token: str, associated: list[bytes]) -> int:
    raw = base64.urlsafe_b64decode(token + "=")
    return int.from_bytes(AESSIV(KEY).decrypt(raw[8:], associated), "big")


def test_the_associated_data_is_one_unambiguous_string() -> None:
    """The second format's associated data, rebuilt here from its description: version,
    the epoch's length (two bytes), the epoch, the user, the nonce; the length prefix
    keeps epoch "e" with user "pa" apart from epoch "ep" with user "a"."""
    token = tokens(epoch="ep1").seal("alice", 4242)
    nonce = base64.urlsafe_b64decode(token + "=")[:8]
    associated = b"jmappushd resumption token 2" + b"\x00\x03ep1" + b"alice" + nonce
    assert _unsealed(token, [associated]) == 4242
    assert tokens(epoch="ep").open("a", tokens(epoch="e").seal("pa", 9)) is None
    with pytest.raises(ValueError, match="epoch"):
        tokens(epoch="x" * 70_000)


def test_tokens_of_the_first_format_still_open() -> None:
    """Tokens sealed before the upgrade (four associated-data components) keep working,
    for their user and epoch only: an upgrade resynchronises no client."""
    nonce = bytes(range(8))
    sealed = AESSIV(KEY).encrypt((77).to_bytes(8, "big"),
                                 [b"jmappushd resumption token 1", b"ep1", b"alice", nonce])
    old = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
    assert tokens().open("alice", old) == 77
    assert tokens().open("bob", old) is None
    assert tokens(epoch="ep2").open("alice", old) is None


def test_a_forged_token_does_not_open() -> None:
    """Authenticated: flipping any bit of a genuine token makes it unknown."""
    t = tokens()
    raw = bytearray(base64.urlsafe_b64decode(t.seal("alice", 7) + "="))
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            forged = bytearray(raw)
            forged[i] ^= bit
            text = base64.urlsafe_b64encode(bytes(forged)).rstrip(b"=").decode()
            assert t.open("alice", text) is None, (i, bit)


def test_shared_tokens_are_sealed_once_per_user_and_position_and_bounded() -> None:
    """Fan-out: all of one user's listeners get the same token for one change (one
    sealing); the next change gets a new one; the memo keeps at most ``max_shared``
    users, forgetting the longest-remembered first."""
    t = ResumptionTokens(KEY, "ep1", max_shared=3)
    one = t.shared("alice", 5)
    assert t.shared("alice", 5) is one and t.open("alice", one) == 5
    two = t.shared("alice", 6)
    assert two != one and t.open("alice", two) == 6
    for user in ("bob", "carol", "dave"):
        t.shared(user, 6)
    assert len(t._shared) == 3 and "alice" not in t._shared
    assert t.shared("dave", 6) is t._shared["dave"][1]


def test_out_of_range_positions_and_bad_keys_are_refused() -> None:
    """A negative or over-64-bit position is a bug, not a token; a key of the wrong size is
    refused at construction."""
    with pytest.raises(ValueError):
        tokens().seal("alice", -1)
    with pytest.raises(ValueError):
        tokens().seal("alice", 2**64)
    with pytest.raises(ValueError, match="64 bytes"):
        ResumptionTokens(b"short", "ep1")


def test_key_is_generated_once_and_kept_in_the_store() -> None:
    """The sealing key is created on first use and read back afterwards, so tokens stay
    valid across restarts and every daemon on the store shares them."""
    store = open_memory_store()
    first = fired(defer.ensureDeferred(load_key(store)))
    assert len(first) == KEY_BYTES
    assert fired(defer.ensureDeferred(load_key(store))) == first
    assert fired(store.get_meta(KEY_META)) is not None


def test_a_damaged_key_fails_the_start_with_a_clear_message() -> None:
    """A metadata value that is not a 64-byte base64url key is not silently replaced (that
    would void every client's token): the hub's start fails and says what to do."""
    store = open_memory_store()
    fired(store.set_meta(KEY_META, "not a key"))
    hub = Hub(store)
    with pytest.raises(ValueError, match="remove it to generate a new one"):
        fired(defer.ensureDeferred(hub.start()))


@pytest_twisted.ensureDeferred
async def test_tokens_survive_a_restart_on_sqlite(tmp_path: Path) -> None:
    """ES-10, WS-19: a token sealed before the daemon stopped opens after it restarts on
    the same SQLite store; a new store (new key, new epoch) does not accept it."""
    from twisted.internet import reactor

    async def started(path: Path) -> tuple[Hub, SQLiteStore]:
        store = SQLiteStore(str(path), reactor=reactor)
        await store.open()
        hub = Hub(store)
        await hub.start()
        return hub, store

    hub, store = await started(tmp_path / "a.sqlite")
    await hub.publish({"A": {"Email": "s1"}})
    token = hub.tokens.seal("alice", hub.last_seq)
    await store.close()
    hub, store = await started(tmp_path / "a.sqlite")
    assert hub.tokens.open("alice", token) == 1
    await store.close()
    other, other_store = await started(tmp_path / "b.sqlite")
    assert other.tokens.open("alice", token) is None
    await other_store.close()


def test_a_hub_without_metadata_still_seals() -> None:
    """A bare state log (no metadata) gets a key for this process only."""

    class BareLog:
        def position(self) -> defer.Deferred[tuple[str, int]]:
            return defer.succeed(("ep", 0))

    hub = Hub(BareLog())  # type: ignore[arg-type]
    fired(defer.ensureDeferred(hub.start()))
    assert hub.tokens.open("u", hub.tokens.seal("u", 3)) == 3


def test_hub_tokens_before_start_is_an_error() -> None:
    """Nothing seals before the key is loaded (a bug would otherwise mint throw-away tokens)."""
    hub = Hub(MemoryStore())
    for use in (lambda: hub.tokens.seal("u", 1), lambda: hub.tokens.shared("u", 1),
                lambda: hub.tokens.open("u", "t")):
        with pytest.raises(RuntimeError, match="not started"):
            use()


def test_sealing_costs_microseconds() -> None:
    """A loose bound (measured: about 3 µs per token on the development machine): a token
    per change per user is affordable on the reactor; fan-out shares one per user."""
    t = tokens()
    per_token = timeit.timeit(lambda: t.seal("alice", 12345), number=2000) / 2000
    assert per_token < 500e-6
