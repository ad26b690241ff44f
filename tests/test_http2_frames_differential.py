"""The HTTP/2 WebSocket's frame fast path answers every input exactly as wsproto does.

``H2WebSocket._take_whole_frames`` parses whole small masked text frames (and pongs)
straight from a DATA payload while wsproto is between frames; everything else is
wsproto's. The corpus of valid and invalid client frames of the HTTP/1.1 differential
test (RFC 6455 §5.2 length encodings, §5.5 control frames, §5.4 fragmentation, §5.1
masking, §5.8 reserved bits and opcodes, §8.1 UTF-8, §7.4 close codes) is sent over a
real in-memory HTTP/2 connection (RFC 8441 stream) in one DATA frame, one DATA frame
per byte (a one-byte payload is never a whole frame: wsproto only; see
:func:`one_per_byte`), split into two DATA frames at every offset, and in one DATA
frame with the fast path switched off (as ``_fastpath.check()`` does when wsproto
changed). Every way must give the same frames back on the stream (answers, pongs,
Close and its code) and the same end of the stream; with the same split, the very
same bytes (a Close's reason text is wsproto's, worded by where the bytes were split).
Checklist: C-WS-4, WS-12, WS-22, H2WS-2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h2.events
import pytest
from twisted.web.resource import Resource

from jmappushd.auth.passwords import new_bearer_token, token_digest
from jmappushd.net import _fastpath
from jmappushd.transports.websocket.h2session import CLOSE_GRACE_S, H2WebSocket
from jmappushd.transports.websocket.handshake import HandshakeResource
from jmappushd.web.site import JMAPSite
from tests.store_backends import fired
from tests.test_http2_channel import Peer
from tests.test_websocket_frames_differential import (
    BEYOND,
    CORPUS,
    EXPECTED,
    FAST,
    VALID,
    WITHIN,
    frame,
    text,
)
from tests.test_websocket_helpers import Harness, write_config

WS = "ws-heartbeat-interval = 60\nws-client-timeout = 120\nws-throttle = 0\n" \
     "max-connections-per-user = 1000000"


@dataclass(frozen=True)
class Outcome:
    sent_back: bytes
    """Every DATA octet the server sent on the stream: answers, pongs, Close."""
    end: str
    """How the stream ended: "open", "ended" (END_STREAM) or "reset <code>"."""
    wsproto_fed: int
    """Octets handed to wsproto's parser (0: the fast path took everything)."""


class Driver:
    """One site with the real handshake and factory; each run opens a fresh stream."""

    def __init__(self, tmp_path: Path, max_size: int) -> None:
        self.h = Harness(write_config(tmp_path, WS, f"max-size-request = {max_size}"))
        handshake = HandshakeResource(self.h.app, self.h.factory)
        root, jmap = Resource(), Resource()
        jmap.putChild(b"ws", handshake)
        root.putChild(b"jmap", jmap)
        self.site = JMAPSite(root, max_body=max_size, name="jmap", access_log=False,
                             header_timeout=10, http2=True, reactor=self.h.clock,
                             timers=self.h.app.wheel)
        self.h.store.add("alice", "A")
        self.token = new_bearer_token()
        fired(self.h.store.create_token("alice", token_digest(self.token)))

    def run(self, chunks: Iterable[bytes]) -> Outcome:
        peer = Peer(self.h.clock, self.site)
        sid: int = peer.conn.get_next_available_stream_id()
        peer.conn.send_headers(sid, [
            (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
            (":path", "/jmap/ws"), (":authority", "localhost"),
            ("sec-websocket-version", "13"), ("sec-websocket-protocol", "jmap"),
            ("authorization", f"Bearer {self.token}")])
        peer.flush()
        assert peer.response(sid)[0] == 200
        session = next(c for c in self.h.factory.connections
                       if isinstance(c, H2WebSocket) and c.principal is not None)
        fed: list[int] = []
        ws = session._ws
        receive = ws.receive_data

        def to_wsproto(data: bytes | None) -> None:
            fed.append(len(data or b""))
            receive(data)

        ws.receive_data = to_wsproto  # type: ignore[method-assign]
        for chunk in chunks:  # DATA frames sent together arrive in one dataReceived
            for piece in self._frames(peer, sid, chunk):
                if sid not in peer.conn.streams:
                    break
                peer.conn.send_data(sid, piece)
        peer.flush()
        self.h.clock.advance(CLOSE_GRACE_S + 1)  # an unanswered Close ends in a reset
        peer.flush()
        back = b"".join(e.data for e in peer.events
                        if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
        end = "open"
        for e in peer.events:
            if getattr(e, "stream_id", None) == sid:
                if isinstance(e, h2.events.StreamEnded):
                    end = "ended"
                elif isinstance(e, h2.events.StreamReset):
                    end = f"reset {int(e.error_code)}"
        peer.channel.connectionLost(None)  # type: ignore[arg-type]
        return Outcome(back, end, sum(fed))


    @staticmethod
    def _frames(peer: Peer, sid: int, chunk: bytes) -> Iterable[bytes]:
        """``chunk`` as DATA frames of at most the server's frame size; the bytes so far
        are delivered first whenever the windows would not take the next frame."""
        size = peer.conn.max_outbound_frame_size
        for at in range(0, len(chunk), size):
            piece = chunk[at:at + size]
            if peer.conn.local_flow_control_window(sid) < len(piece):
                peer.flush()
                if (sid not in peer.conn.streams
                        or peer.conn.local_flow_control_window(sid) < len(piece)):
                    return  # the server stopped reading (it closed): nothing more goes
            yield piece


def one_per_byte(data: bytes) -> list[bytes]:
    """One DATA frame per octet; past the first 200 (every frame header of the corpus
    but those of the large frames' payload) 4,096 at a time, which wsproto is then in
    the middle of anyway: a 64 KiB frame would otherwise be 64 Ki DATA frames."""
    head = [data[i:i + 1] for i in range(min(200, len(data)))]
    return head + [data[i:i + 4096] for i in range(200, len(data), 4096)]


@pytest.fixture(scope="module", params=[WITHIN, BEYOND], ids=["65536-within-cap",
                                                              "65536-beyond-cap"])
def driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Driver:
    return Driver(tmp_path_factory.mktemp("h2ws"), request.param)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The server's (unmasked) frames as (first octet, payload)."""
    frames, pos = [], 0
    while pos + 2 <= len(data):
        n = data[pos + 1] & 0x7F
        head = 2 if n < 126 else 4 if n == 126 else 10
        if n >= 126:
            n = int.from_bytes(data[pos + 2:pos + head], "big")
        frames.append((data[pos], data[pos + head:pos + head + n]))
        pos += head + n
    assert pos == len(data)
    return frames


def _close_code(out: Outcome) -> int | None:
    """The code of the first Close the server sent."""
    for first, payload in server_frames(out.sent_back):
        if first & 0x0F == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return None


def answered_alike(a: Outcome, b: Outcome) -> bool:
    """The same frames back and the same end, a Close's reason text aside: wsproto words
    it by where the split fell ("can't decode byte 0xff in position 6" or "0")."""
    def codes_only(out: Outcome) -> list[tuple[int, bytes]]:
        return [(f, p[:2] if f & 0x0F == 0x8 else p) for f, p in server_frames(out.sent_back)]
    return (codes_only(a), a.end) == (codes_only(b), b.end)


@pytest.mark.parametrize("prefix", [b"", VALID], ids=["alone", "after-a-request"])
@pytest.mark.parametrize("name", list(CORPUS))
def test_one_data_frame_equals_one_per_byte_and_wsproto_alone(
        driver: Driver, name: str, prefix: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bytes in one DATA frame (fast path first), one DATA frame per byte
    (wsproto only) and one DATA frame with the fast path off: the same octets back on
    the stream and the same end of it; where the RFC fixes a close code, it is that."""
    data = prefix + CORPUS[name]
    whole = driver.run([data])
    split = driver.run(one_per_byte(data))
    monkeypatch.setattr(_fastpath.wsproto_state, "WSPROTO_FRAMES", False)
    plain = driver.run([data])
    assert plain.wsproto_fed > 0  # wsproto alone really handled it
    assert answered_alike(whole, split), (whole, split)
    assert (whole.sent_back, whole.end) == (plain.sent_back, plain.end)
    if name in EXPECTED and not prefix:
        assert _close_code(whole) == EXPECTED[name]


@pytest.mark.parametrize("name", ["text 126 minimal", "fragmented text with a ping between",
                                  "invalid UTF-8", "close 1000", "ping 125",
                                  "two requests", "text with RSV1"])
def test_split_into_two_data_frames_anywhere(driver: Driver, name: str) -> None:
    """A request then the frame, cut into two DATA frames at every offset (so the fast
    path takes a whole frame and hands wsproto the start of the next, or finds a partial
    frame and leaves both DATA frames to wsproto): always the answer of one DATA frame."""
    data = VALID + CORPUS[name]
    whole = driver.run([data])
    for cut in range(1, len(data), max(1, len(data) // 97)):
        split = driver.run([data[:cut], data[cut:]])
        assert answered_alike(whole, split), (cut, whole, split)


@pytest.mark.parametrize("name", FAST)
def test_the_fast_path_takes_valid_small_frames(driver: Driver, name: str) -> None:
    """The one-DATA-frame side of the comparison really is the fast path: valid small
    frames never reach wsproto, and the session stays open."""
    out = driver.run([CORPUS[name]])
    assert out.wsproto_fed == 0
    assert out.end == "open" and _close_code(out) is None


def test_nothing_is_answered_after_a_close(driver: Driver) -> None:
    """A request (taken by the fast path), a binary message (wsproto's: 1003) and a
    request behind it in the same DATA frame: the first is answered, the session
    closes 1003, the last is never answered; as when every octet arrives alone."""
    data = VALID + frame(b"\x00", 0x2) + VALID
    whole, split = driver.run([data]), driver.run(one_per_byte(data))
    assert answered_alike(whole, split)
    assert _close_code(whole) == 1003
    assert whole.sent_back.count(b'"@type":"RequestError"') == 1  # 60 'a's: not JSON
    assert text(60) == b"a" * 60
