"""The DATA fast paths leave an ``h2`` connection exactly as ``h2`` itself does.

``_fastpath.h2_send_data`` frames a tunnel's DATA and ``_fastpath.h2_take_data`` parses
the client's, both outside ``h2``'s state machines. Each test drives two identical
server connections with the same client bytes, one through the fast path (and ``h2``
for whatever it declines), one through ``h2`` alone, and compares the wire bytes, the
payloads, both flow-control windows each way, the stream's state and its octet count,
and the errors (RFC 9113 §6.1 DATA, §6.9 flow control, §5.1 stream states, §4.2 frame
size). Checklist: H2WS-2 (WebSocket frames in DATA frames, flow control both ways).
"""

from __future__ import annotations

import random
from typing import Any

import h2.events
import h2.exceptions
import pytest

from jmappushd.net import _fastpath
from jmappushd.net._fastpath import h2_pair, h2_send_data, h2_state, h2_take_data

STREAM = 1


def through_h2(server: Any, wire: bytes) -> tuple[list[tuple[int, bytes]], str | None]:
    try:
        events = server.receive_data(wire)
    except h2.exceptions.ProtocolError as e:
        return [], type(e).__name__
    return [(e.stream_id, e.data) for e in events
            if isinstance(e, h2.events.DataReceived)], None


def through_fast(server: Any, wire: bytes) -> tuple[list[tuple[int, bytes]], str | None]:
    taken, pos = h2_take_data(server, wire, {STREAM})
    rest, error = through_h2(server, wire[pos:]) if pos < len(wire) else ([], None)
    return taken + rest, error


def frame(kind: int, flags: int, stream_id: int, body: bytes, declared: int | None = None
          ) -> bytes:
    n = len(body) if declared is None else declared
    return (n.to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big")
            + body)


def compare(wire: bytes, window: int = 65_535) -> tuple[list[tuple[int, bytes]], str | None]:
    """``wire`` into a fast and an ``h2``-only server: everything must agree."""
    fast_side, plain_side = h2_pair(window)[1], h2_pair(window)[1]
    fast = through_fast(fast_side, wire)
    plain = through_h2(plain_side, wire)
    if plain[1] is None:
        assert fast == plain
        assert h2_state(fast_side, STREAM) == h2_state(plain_side, STREAM)
    else:
        # A read that ends in a connection error: h2 drops the events of the frames
        # before it, the fast path has delivered them; the same error, and the same
        # GOAWAY ends the connection either way.
        assert fast[1] == plain[1]
        assert fast[0] == [(STREAM, p) for p in _plain_payloads(wire)][:len(fast[0])]
        assert fast_side.data_to_send() == plain_side.data_to_send()
    return plain


def _plain_payloads(wire: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 9 <= len(wire):
        n = int.from_bytes(wire[pos:pos + 3], "big")
        out.append(wire[pos + 9:pos + 9 + n])
        pos += 9 + n
    return out


def test_client_data_frames_are_taken_as_h2_takes_them() -> None:
    """A run of plain DATA frames of many sizes, sent by an ``h2`` client, is taken whole
    and leaves the same windows and count as ``h2``'s own parse."""
    client, _, sid = h2_pair()
    rng = random.Random(8441)
    for size in [1, 2, 125, 126, 1000, 16_384] + [rng.randrange(1, 3000) for _ in range(10)]:
        client.send_data(sid, bytes(rng.randrange(256) for _ in range(size)))
    wire = client.data_to_send()
    server = h2_pair()[1]
    taken, pos = h2_take_data(server, wire, {sid})
    assert pos == len(wire) and len(taken) == 16
    assert compare(wire)[0] == taken


@pytest.mark.parametrize("cut", [1, 8, 9, 10, 38])
def test_a_partial_frame_is_left_to_h2_and_so_is_everything_after(cut: int) -> None:
    """Bytes ending inside a frame: the whole frames before it are taken, the partial one
    goes to ``h2``'s buffer, and while it holds one the next read is all ``h2``'s."""
    one, two = frame(0, 0, STREAM, b"a" * 30), frame(0, 0, STREAM, b"b" * 30)
    server = h2_pair()[1]
    taken, pos = h2_take_data(server, one + two[:cut], {STREAM})
    assert taken == [(STREAM, b"a" * 30)] and pos == len(one)
    assert through_h2(server, two[:cut]) == ([], None)
    assert h2_take_data(server, two[cut:], {STREAM}) == ([], 0)  # h2 holds a part
    assert through_h2(server, two[cut:]) == ([(STREAM, b"b" * 30)], None)
    twin = h2_pair()[1]
    through_h2(twin, one + two)
    assert h2_state(server, STREAM) == h2_state(twin, STREAM)


@pytest.mark.parametrize(("name", "wire"), [
    ("END_STREAM", frame(0, 0x1, STREAM, b"end")),
    ("PADDED", frame(0, 0x8, STREAM, b"\x02ab\x00\x00")),
    ("unknown flag", frame(0, 0x2, STREAM, b"odd")),
    ("empty", frame(0, 0, STREAM, b"")),
    ("reserved bit", frame(0, 0, STREAM | 0x8000_0000, b"r")),
    ("not a tunnel", frame(0, 0, 3, b"s")),
    ("stream 0", frame(0, 0, 0, b"z")),
    ("over the frame size", frame(0, 0, STREAM, b"x" * 16_385)),
    ("PING", frame(6, 0, 0, b"8octets!")),
    ("WINDOW_UPDATE", frame(8, 0, STREAM, (100).to_bytes(4, "big"))),
    ("RST_STREAM", frame(3, 0, STREAM, (8).to_bytes(4, "big"))),
])
def test_what_is_not_a_plain_data_frame_is_h2s(name: str, wire: bytes) -> None:
    """Flags, padding, empty frames, the reserved bit, other streams, oversized frames
    and other frame types are never taken, alone or after a plain frame: ``h2`` answers
    them (including its errors) exactly as without the fast path."""
    plain = frame(0, 0, STREAM, b"first")
    server = h2_pair()[1]
    assert h2_take_data(server, wire, {STREAM}) == ([], 0)
    assert h2_take_data(server, plain + wire, {STREAM}) == ([(STREAM, b"first")],
                                                             len(plain))
    compare(plain + wire)


def test_a_window_overrun_is_h2s_flow_control_error() -> None:
    """DATA beyond the stream's receive window is not taken: ``h2`` raises its
    FlowControlError and both sides send the same GOAWAY (RFC 9113 §6.9.1)."""
    wire = b"".join(frame(0, 0, STREAM, b"w" * 16_384) for _ in range(4))
    wire += frame(0, 0, STREAM, b"w" * 100)  # 65,636 > 65,535
    assert compare(wire)[1] == "FlowControlError"
    server = h2_pair()[1]
    taken, _ = h2_take_data(server, wire, {STREAM})
    assert len(taken) == 3  # the fourth overruns the window by one octet: h2's


def test_the_connection_window_counts_too() -> None:
    """With a connection window smaller than the stream's (no increment), a frame that
    fits the stream but not the connection is left to ``h2``, which refuses it."""
    fast, plain = h2_pair()[1], h2_pair()[1]
    for side in (fast, plain):
        side._inbound_flow_control_window_manager.current_window_size = 50
    wire = frame(0, 0, STREAM, b"c" * 40) + frame(0, 0, STREAM, b"c" * 20)
    taken, error = through_fast(fast, wire)
    assert (taken, error) == ([(STREAM, b"c" * 40)], "FlowControlError")
    assert through_h2(plain, wire) == ([], "FlowControlError")  # h2 drops the first
    assert fast.data_to_send() == plain.data_to_send()


def test_a_closed_stream_is_h2s() -> None:
    """After the client ended the stream (END_STREAM) its DATA is not taken; ``h2``
    answers it as a stream error, the same way."""
    client, _, sid = h2_pair()
    client.end_stream(sid)
    ended = client.data_to_send()
    fast, plain = h2_pair()[1], h2_pair()[1]
    for side in (fast, plain):
        side.receive_data(ended)
    wire = frame(0, 0, sid, b"late")
    assert h2_take_data(fast, wire, {sid}) == ([], 0)
    assert through_fast(fast, wire) == through_h2(plain, wire)
    assert fast.data_to_send() == plain.data_to_send()


def test_fast_path_off_takes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switched off (a changed ``h2``), neither path does anything: ``h2`` gets it all."""
    monkeypatch.setattr(_fastpath.h2_data, "H2_DATA", False)
    _, server, sid = h2_pair()
    assert h2_take_data(server, frame(0, 0, sid, b"x"), {sid}) == ([], 0)
    assert not h2_send_data(server, sid, b"x")


# -- sending --


def test_sent_frames_equal_h2s_and_the_client_reads_them() -> None:
    """Frames of many sizes sent through the fast path are byte for byte ``h2``'s
    ``send_data``, with the same windows left, and an ``h2`` client reads them."""
    (client, fast, sid), (_, plain, _) = h2_pair(), h2_pair()
    rng = random.Random(6455)
    payloads = [bytes(rng.randrange(256) for _ in range(size))
                for size in [1, 125, 126, 16_384, 40_000 % 16_384, 3, 700]]
    for data in payloads:
        assert h2_send_data(fast, sid, data)
        plain.send_data(sid, data)
    assert h2_state(fast, sid) == h2_state(plain, sid)
    got = [e.data for e in client.receive_data(fast.data_to_send())
           if isinstance(e, h2.events.DataReceived)]
    assert got == payloads


def test_sending_declines_what_h2_would_refuse_or_treat_otherwise() -> None:
    """Beyond the stream's window or the peer's frame size, empty, on an unknown stream
    or after our END_STREAM: declined (the caller then uses ``h2``, which raises or
    queues), and nothing changes."""
    _, server, sid = h2_pair()
    before = h2_state(server, sid)
    assert not h2_send_data(server, sid, b"")
    assert not h2_send_data(server, sid, b"x" * 16_385)
    assert not h2_send_data(server, 3, b"x")
    assert h2_state(server, sid) == before
    for _ in range(3):
        assert h2_send_data(server, sid, b"y" * 16_384)
    assert h2_send_data(server, sid, b"y" * 16_383)  # the window is now 0
    assert not h2_send_data(server, sid, b"z")
    with pytest.raises(h2.exceptions.FlowControlError):
        server.send_data(sid, b"z")
    server.end_stream(sid)
    assert not h2_send_data(server, sid, b"")
