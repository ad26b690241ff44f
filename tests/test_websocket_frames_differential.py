"""The WebSocket frame fast path answers every input exactly as Autobahn does.

``JMAPWebSocketProtocol._take_whole_frames`` parses whole small frames straight from a
TCP chunk; a byte-by-byte delivery never reaches it (a one-byte chunk is never a whole
frame, and after it Autobahn holds a partial frame), so it is all Autobahn. Each frame
of a corpus of valid and invalid frames (RFC 6455 §5.2 length encodings, §5.5 control
frames, §5.4 fragmentation, §5.1 masking, §5.8 reserved bits and opcodes, §8.1 UTF-8,
§7.4 close codes) is fed both ways, alone and after a valid frame, and must give the
same messages to the JMAP layer, the same frames written back, the same close code
and the same drop (C-WS-4, WS-12, WS-22). Protocols run on in-memory transports with
a task.Clock (tests.test_websocket_helpers.Harness).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from jmappushd.net import _fastpath
from tests.test_websocket_helpers import Harness, echo, write_config

MASK = b"\x37\xfa\x21\x3d"
TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def frame(payload: bytes, opcode: int = TEXT, *, fin: bool = True, rsv: int = 0,
          masked: bool = True, form: int | None = None, declared: int | None = None) -> bytes:
    """A client frame with a chosen length form (7, 16 or 64 bits) and declared length."""
    n = len(payload) if declared is None else declared
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if masked else 0
    if form == 7:
        head += bytes([bit | n])
    elif form == 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = (MASK * (len(payload) // 4 + 1))[:len(payload)]
    return head + MASK + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
                          ).to_bytes(len(payload), "big")


def text(n: int) -> bytes:
    """``n`` octets of text: a Core/echo Request padded to size where it fits, else 'a's."""
    base = json.dumps(echo(rid="r", pad="")).encode()
    if n < len(base):
        return b"a" * n
    return json.dumps(echo(rid="r", pad="x" * (n - len(base)))).encode()


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


VALID = frame(text(60))
"""A whole small request, taken by the fast path when a chunk starts with it."""

# name -> frame bytes. Every one is fed in both configs below.
CORPUS: dict[str, bytes] = {
    **{f"text {n} minimal": frame(text(n)) for n in (0, 125, 126, 65535, 65536)},
    "text 0 in 16 bits": frame(text(0), form=16),
    "text 125 in 16 bits": frame(text(125), form=16),
    **{f"text {n} in 64 bits": frame(text(n), form=64) for n in (0, 125, 126, 65535)},
    "64-bit length with the high bit set": frame(b"", form=64, declared=2**63 + 5),
    "ping 125": frame(b"p" * 125, PING),
    "ping 126": frame(b"p" * 126, PING),
    "ping 5 in 16 bits": frame(b"p" * 5, PING, form=16),
    "pong 0": frame(b"", PONG),
    "pong 125": frame(b"q" * 125, PONG),
    "pong 126": frame(b"q" * 126, PONG),
    "pong 125 in 16 bits": frame(b"q" * 125, PONG, form=16),
    "pong 5 in 64 bits": frame(b"q" * 5, PONG, form=64),
    "close 125": frame(close_payload(1000, b"r" * 123), CLOSE),
    "close 126": frame(close_payload(1000, b"r" * 124), CLOSE),
    "close without code": frame(b"", CLOSE),
    "close 1000": frame(close_payload(1000), CLOSE),
    "close 4000 with reason": frame(close_payload(4000, b"bye"), CLOSE),
    "close with one octet": frame(b"\x03", CLOSE),
    **{f"close invalid code {c}": frame(close_payload(c), CLOSE) for c in (999, 1005, 1016, 5000)},
    "close reason not UTF-8": frame(close_payload(1000, b"\xff"), CLOSE),
    "fragmented text": frame(text(70)[:30], fin=False) + frame(text(70)[30:], CONT),
    "fragmented text with a ping between": (frame(text(70)[:30], fin=False)
                                            + frame(b"hb", PING)
                                            + frame(text(70)[30:], CONT)),
    "fragmented ping": frame(b"hb", PING, fin=False),
    "continuation without a start": frame(b"abc", CONT),
    "text inside a fragmented text": frame(b"ab", fin=False) + frame(b"cd"),
    **{f"text with RSV{i}": frame(text(60), rsv=1 << (3 - i)) for i in (1, 2, 3)},
    "pong with RSV1": frame(b"", PONG, rsv=4),
    "unmasked text": frame(text(60), masked=False),
    "unmasked pong": frame(b"", PONG, masked=False),
    **{f"opcode {op:#x}": frame(b"", op) for op in range(16)},
    **{f"opcode {op:#x} not final": frame(b"", op, fin=False) for op in range(16)},
    "invalid UTF-8": frame(b'{"x":"\xff"}'),
    "overlong UTF-8": frame(b"\xc0\xaf"),
    "UTF-16 surrogate in UTF-8": frame(b"\xed\xa0\x80"),
    "truncated UTF-8 at the end": frame(b"ab\xe2\x82"),
    "valid UTF-8 split over fragments": frame(b'"\xe2\x82', fin=False) + frame(b'\xac"', CONT),
    "invalid UTF-8 split over fragments": frame(b"\xe2", fin=False) + frame(b"\x28", CONT),
    "binary": frame(b"\x00\x01", BINARY),
    "binary fragmented": frame(b"\x00", BINARY, fin=False) + frame(b"\x01", CONT),
    "two requests": VALID + frame(text(200)),
}

FAST = ["text 0 minimal", "text 125 minimal", "text 126 minimal", "pong 0", "pong 125",
        "two requests"]
"""Valid frames the fast path must take whole when they arrive in one chunk."""

# Expected close codes where the RFC fixes them (None: the connection stays open).
EXPECTED = {
    "text 125 minimal": None, "pong 125": None, "ping 125": None,
    "text 0 in 16 bits": 1002, "text 125 in 16 bits": 1002, "text 0 in 64 bits": 1002,
    "text 65535 in 64 bits": 1002, "64-bit length with the high bit set": 1002,
    "ping 126": 1002, "pong 126": 1002, "pong 125 in 16 bits": 1002,
    "pong 5 in 64 bits": 1002, "close 126": 1002, "continuation without a start": 1002,
    "text with RSV1": 1002, "unmasked text": 1002, "unmasked pong": 1002,
    "opcode 0x3": 1002, "opcode 0xb": 1002, "invalid UTF-8": 1007,
    "invalid UTF-8 split over fragments": 1007, "binary": 1003, "close 1000": 1000,
}

WITHIN = 40_000
"""maxSizeRequest whose cap (2 x) admits a 65536-octet frame."""
BEYOND = 32_000
"""maxSizeRequest whose cap (64,000) refuses 65535 and 65536 octets with 1009."""


@dataclass(frozen=True)
class Outcome:
    delivered: tuple[bytes, ...]
    written: tuple[tuple[int, bytes], ...]
    close_code: int | None
    dropped: bool
    autobahn_used: bool


class Driver:
    """Opens connections on a Harness and records what each input did."""

    def __init__(self, tmp_path: Path, max_size: int) -> None:
        self.h = Harness(write_config(tmp_path, "max-connections-per-user = 1000000",
                                      jmap=f"max-size-request = {max_size}"))
        self.principal = self.h.store.add("alice", "A")

    def run(self, chunks: Iterable[bytes]) -> Outcome:
        proto, transport = self.h.connect(self.principal)
        delivered: list[bytes] = []
        autobahn: list[int] = []
        on_message, feed = proto.onMessage, proto._dataReceived

        def record(payload: bytes, isBinary: bool) -> None:
            delivered.append(payload)
            on_message(payload, isBinary)

        def to_autobahn(data: bytes) -> None:
            autobahn.append(len(data))
            feed(data)

        proto.onMessage = record  # type: ignore[method-assign]
        proto._dataReceived = to_autobahn  # type: ignore[method-assign]
        for chunk in chunks:
            if proto.state != proto.STATE_OPEN:
                # Autobahn itself answers bytes after a failure by how they are split
                # (a second violation drops TCP); not the fast path's doing.
                break
            proto.dataReceived(chunk)
        self.h.clock.advance(0)
        dropped = transport.disconnecting
        frames = transport.take()
        codes = [struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
                 for op, p in frames if op == CLOSE]
        written = tuple((op, p) for op, p in frames if op != CLOSE)
        self.h.clock.advance(5)  # let the closing handshake's timer end the connection
        return Outcome(tuple(delivered), written, codes[0] if codes else None, dropped,
                       bool(autobahn))


def answered_alike(a: Outcome, b: Outcome) -> bool:
    """Same messages, frames and close code: what Autobahn keeps whatever the split."""
    return (a.delivered, a.written, a.close_code) == (b.delivered, b.written, b.close_code)


def same(a: Outcome, b: Outcome) -> bool:
    """All of the above and the same drop: for the same chunks with and without the
    fast path (Autobahn itself may drop or not by how bytes after a failure arrive)."""
    return answered_alike(a, b) and a.dropped == b.dropped


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


@pytest.fixture(scope="module", params=[WITHIN, BEYOND], ids=["65536-within-cap",
                                                              "65536-beyond-cap"])
def driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Driver:
    return Driver(tmp_path_factory.mktemp("ws"), request.param)


@pytest.mark.parametrize("name", list(CORPUS))
def test_one_chunk_equals_byte_by_byte(driver: Driver, name: str) -> None:
    """The same bytes get the same answer in one TCP chunk (fast path first) and one
    byte at a time (Autobahn only): the messages delivered to the JMAP layer, the
    frames written back and the close code."""
    data = CORPUS[name]
    whole, split = driver.run([data]), driver.run(byte_by_byte(data))
    assert answered_alike(whole, split), (whole, split)
    if name in EXPECTED:
        assert whole.close_code == EXPECTED[name]


@pytest.mark.parametrize("name", list(CORPUS))
def test_after_a_valid_frame_in_the_same_chunk(driver: Driver, name: str) -> None:
    """A frame after a whole request in the same chunk (the request taken by the fast
    path, the rest where it falls) is answered as when every byte arrives alone."""
    data = VALID + CORPUS[name]
    whole, split = driver.run([data]), driver.run(byte_by_byte(data))
    assert answered_alike(whole, split), (whole, split)
    assert whole.delivered[:1] == split.delivered[:1] == (text(60),)


@pytest.mark.parametrize("prefix", [b"", VALID], ids=["alone", "after-a-request"])
@pytest.mark.parametrize("name", list(CORPUS))
def test_fast_path_answers_as_autobahn_alone(driver: Driver, name: str, prefix: bytes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The same chunk with the fast path and with Autobahn alone (the fast path switched
    off as ``fastpath.check()`` does when Autobahn changed): identical messages, frames,
    close code and drop."""
    data = prefix + CORPUS[name]
    fast = driver.run([data])
    monkeypatch.setattr(_fastpath.websocket, "WS_FRAMES", False)
    plain = driver.run([data])
    assert plain.autobahn_used  # Autobahn alone really handled it
    assert same(fast, plain), (fast, plain)


@pytest.mark.parametrize("name", FAST)
def test_the_fast_path_takes_valid_small_frames(driver: Driver, name: str) -> None:
    """The one-chunk side of the comparison really is the fast path: valid small frames
    never reach Autobahn's parser (so the differential test compares two paths)."""
    outcome = driver.run([CORPUS[name]])
    assert not outcome.autobahn_used
    assert outcome.close_code is None and not outcome.dropped


@pytest.mark.parametrize("length", [65535, 65536])
def test_oversized_frames_close_1009_beyond_the_cap(tmp_path: Path, length: int) -> None:
    """WS-22, C-WS-4: beyond 2 x maxSizeRequest Autobahn closes 1009; within it the
    message is delivered (and answered by the JMAP layer)."""
    (tmp_path / "b").mkdir()
    (tmp_path / "w").mkdir()
    beyond, within = Driver(tmp_path / "b", BEYOND), Driver(tmp_path / "w", WITHIN)
    data = CORPUS[f"text {length} minimal"]
    assert beyond.run([data]).close_code == 1009
    accepted = within.run([data])
    assert accepted.close_code is None and accepted.delivered == (text(length),)
