"""Clock-driven tests of the WebSocket protocol: throttle batching, heartbeat, client
timeout, flow control, catch-up, credential re-checks and shutdown, on fake transports
with a task.Clock as the App's clock (no reactor, no sockets)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from jmappushd.auth.authenticator import Principal
from jmappushd.transports.websocket.protocol import CLOSE_GRACE_S, JMAPWebSocketProtocol
from tests.store_backends import fired
from tests.test_websocket_helpers import (
    FakeTransport,
    Harness,
    client_frame,
    echo,
    write_config,
)

WS = "ws-heartbeat-interval = 5\nws-client-timeout = 12\nws-throttle = 1000"


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(write_config(tmp_path, WS))


def enabled(h: Harness, principal: Principal, **enable: object
            ) -> tuple[JMAPWebSocketProtocol, FakeTransport]:
    proto, transport = h.connect(principal)
    h.send(proto, {"@type": "WebSocketPushEnable", **enable})
    assert transport.value() == b""
    return proto, transport


def close_code(frames: list[tuple[int, bytes]]) -> int:
    (code,) = [struct.unpack("!H", p[:2])[0] for op, p in frames if op == 8]
    return int(code)


@pytest.mark.parametrize(("ms", "window"), [(1000, 1.0), (250, 0.25)])
def test_throttle_batches_changes(tmp_path: Path, ms: int, window: float) -> None:
    """SC-2, ws-throttle in milliseconds: the first change goes out at once; later ones
    inside the window are merged (newest state per account/type) into one StateChange
    with the newest pushState, sent exactly when the window ends."""
    h = Harness(write_config(tmp_path, f"ws-throttle = {ms}"))
    alice = h.store.add("alice", "A")
    _proto, transport = enabled(h, alice)
    first = h.publish({"A": {"Email": "e1"}})
    assert transport.messages() == [{"@type": "StateChange", "changed": {"A": {"Email": "e1"}},
                                     "pushState": h.token(alice, first)}]
    h.clock.advance(window / 4)
    h.publish({"A": {"Email": "e2"}})
    h.publish({"A": {"Mailbox": "m1"}})
    last = h.publish({"A": {"Email": "e3"}})
    h.clock.advance(window * 3 / 4 - 0.001)
    assert transport.messages() == []
    h.clock.advance(0.001)
    assert transport.messages() == [{"@type": "StateChange", "pushState": h.token(alice, last),
                                     "changed": {"A": {"Email": "e3", "Mailbox": "m1"}}}]
    assert len(h.clock.getDelayedCalls()) == 1  # idle again: only the heartbeat


def test_heartbeat_pings_in_seconds(h: Harness) -> None:
    """ws-heartbeat-interval is in seconds: a ping at 5 s, none before; the pong keeps
    the connection alive past ws-client-timeout; an idle connection owns one timer."""
    alice = h.store.add("alice", "A")
    proto, transport = enabled(h, alice)
    assert len(h.clock.getDelayedCalls()) == 1
    h.clock.advance(4.9)
    assert transport.take() == []
    h.clock.advance(0.1)
    assert transport.take() == [(9, b"")]
    for _ in range(5):
        proto.dataReceived(client_frame(b"", opcode=10))  # pong
        h.clock.advance(5)
        assert transport.take() == [(9, b"")]
    assert proto.state == proto.STATE_OPEN
    assert len(h.clock.getDelayedCalls()) == 1


def test_staggered_connections_that_answer_pings_are_never_timed_out(tmp_path: Path) -> None:
    """Connections opened at different moments share the timer wheel; every one gets its
    ping on time and, answering it, outlives ws-client-timeout indefinitely (a late
    shared timer once closed such connections with 1001 under load). Default settings:
    a ping every 5 s, closed after 10 s of silence."""
    h = Harness(write_config(tmp_path, ""))
    alice = h.store.add("alice", "A")
    conns = []
    for _ in range(40):
        conns.append(h.connect(alice))
        h.clock.advance(0.11)  # all open before the first ping is due
    for _ in range(600):  # two minutes in 0.2 s steps, each ping answered at once
        h.clock.advance(0.2)
        for proto, transport in conns:
            frames = transport.take()
            assert all(op == 9 for op, _ in frames), frames
            for _ in frames:
                proto.dataReceived(client_frame(b"", opcode=10))
    assert all(proto.state == proto.STATE_OPEN for proto, _ in conns)
    assert len(h.clock.getDelayedCalls()) == 1  # one shared timer for all forty


def test_client_timeout_closes_and_leaves_the_hub(h: Harness) -> None:
    """ws-client-timeout is in seconds: with nothing received for 12 s the server sends
    Close 1001 and leaves the hub at once; an unanswered Close is aborted after the grace
    period, after which the connection owns no timer and is forgotten."""
    alice = h.store.add("alice", "A")
    _proto, transport = enabled(h, alice)
    assert h.app.hub.listener_count == 1
    h.clock.advance(5)
    h.clock.advance(5)
    assert [op for op, _ in transport.take()] == [9, 9]
    h.clock.advance(1.9)
    assert transport.take() == []
    h.clock.advance(0.1)
    assert close_code(transport.take()) == 1001
    assert h.app.hub.listener_count == 0
    h.publish({"A": {"Email": "e1"}})
    assert transport.take() == []
    h.clock.advance(CLOSE_GRACE_S)
    assert transport.aborted
    h.clock.advance(0)
    assert not h.factory.connections
    assert h.clock.getDelayedCalls() == []


def test_any_traffic_defers_the_timeout(h: Harness) -> None:
    """A message received at 10 s moves the client timeout to 22 s."""
    alice = h.store.add("alice", "A")
    proto, transport = h.connect(alice)
    h.clock.advance(10)
    h.send(proto, echo(rid="r"))
    h.clock.advance(11.9)
    assert 8 not in [op for op, _ in transport.take()]
    h.clock.advance(0.1)
    assert close_code(transport.take()) == 1001


def test_thousand_cycles_leave_no_listeners_or_timers(h: Harness) -> None:
    """1,000 connect/enable/publish/disconnect cycles (half closed cleanly, half dropped)
    leave no hub listeners, no registered connections and no DelayedCalls."""
    alice = h.store.add("alice", "A")
    for i in range(1000):
        proto, transport = enabled(h, alice)
        h.publish({"A": {"Email": f"e{i}"}})
        h.publish({"A": {"Email": f"f{i}"}})  # leaves a throttle timer pending
        if i % 2:
            proto.dataReceived(client_frame(struct.pack("!H", 1000), opcode=8))
        else:
            transport.loseConnection()
        h.clock.advance(0)
    assert h.app.hub.listener_count == 0
    assert not h.factory.connections
    assert h.clock.getDelayedCalls() == []


def test_slow_reader_holds_and_merges_pushes(h: Harness) -> None:
    """Flow control: while the transport has paused us, nothing is written and reading
    stops; changes keep merging, and resume sends one StateChange with the newest states."""
    alice = h.store.add("alice", "A")
    proto, transport = enabled(h, alice)
    assert transport.producer is proto and transport.streaming
    proto.pauseProducing()
    assert not transport.reading
    for i in range(50):
        h.publish({"A": {"Email": f"e{i}", f"T{i % 3}": str(i)}})
        h.clock.advance(0.1)
    assert transport.messages() == []
    proto.resumeProducing()
    assert transport.reading
    (message,) = transport.messages()
    assert message["changed"] == {"A": {"Email": "e49", "T0": "48", "T1": "49", "T2": "47"}}
    proto.pauseProducing()  # a new enable while paused starts paused too
    h.send(proto, {"@type": "WebSocketPushEnable"})
    h.publish({"A": {"Email": "late"}})
    assert transport.messages() == []
    proto.resumeProducing()
    assert transport.messages()[0]["changed"] == {"A": {"Email": "late"}}


def test_catch_up_merges_changes_published_meanwhile(h: Harness) -> None:
    """WS-19: enabling with a pushState subscribes before the catch-up query; a change
    published while the query runs wins over the older state the query returns, and both
    go out as one StateChange with the newer pushState."""
    alice = h.store.add("alice", "A")
    _proto, transport = enabled(h, alice, pushState=h.seal(alice, 3))
    live = h.publish({"A": {"Email": "new"}})
    assert transport.messages() == []
    h.store.pending_query.callback(None)  # the answer: {"A": {"Email": "old", "Mailbox": "m"}}
    assert transport.messages() == [{"@type": "StateChange", "pushState": h.token(alice, live),
                                     "changed": {"A": {"Email": "new", "Mailbox": "m"}}}]


def test_credentials_rechecked_on_invalidate(h: Harness) -> None:
    """C-WS-5: when the auth layer reports a change, a connection whose token was revoked
    or whose user is gone is closed with 1008; a connection of a user given a new grant
    stays open and now receives that account's changes."""
    alice = h.store.add("alice", "A")
    bob = h.store.add("bob", "B")
    carol = h.store.add("carol", "C")
    by_token = Principal(alice.user_id, "alice", "token:t1", alice.accounts, "A")
    h.store.create_token("alice", bytes(32))  # t1
    _token_conn, token_t = enabled(h, by_token)
    _bob_conn, bob_t = enabled(h, bob)
    carol_conn, carol_t = enabled(h, carol)
    h.store.revoke_token("t1")
    h.store.remove_user("bob")
    h.store.grant("carol", "A")
    h.app.auth.invalidate()
    assert close_code(token_t.take()) == 1008
    assert close_code(bob_t.take()) == 1008
    assert carol_t.take() == []
    h.publish({"A": {"Email": "a1"}})
    assert carol_t.messages()[0]["changed"] == {"A": {"Email": "a1"}}
    assert carol_conn.principal is not None and carol_conn.principal.account_ids == {"A", "C"}


def test_password_change_closes_password_websockets_with_1008(h: Harness) -> None:
    """C-WS-5, and the same policy as EventSource: a changed password closes the
    WebSockets opened with that password (1008) at the next invalidation; a WebSocket of
    the same user opened with a bearer token stays open and keeps getting changes."""
    alice = h.store.add("alice", "A")
    token = fired(h.store.create_token("alice", bytes(32)))
    by_token = Principal(alice.user_id, "alice", "token:" + token.id, alice.accounts, "A")
    _password_conn, password_t = enabled(h, alice)
    _token_conn, token_t = enabled(h, by_token)
    h.app.auth.invalidate()  # the first pass records the password fingerprint
    h.store.set_password("alice", "changed")
    h.app.auth.invalidate()
    assert close_code(password_t.take()) == 1008
    assert token_t.take() == []
    h.publish({"A": {"Email": "a1"}})
    assert token_t.messages()[0]["changed"] == {"A": {"Email": "a1"}}
    assert password_t.take() == []


def test_shutdown_closes_everything_with_1001(h: Harness) -> None:
    """Shutdown sends Close 1001 on every connection, leaves the hub at once, and finishes
    when all are gone: peers that answer close at once, silent ones are aborted after the
    grace period; no timers remain."""
    alice = h.store.add("alice", "A")
    conns = [enabled(h, alice) for _ in range(3)]
    done = defer.ensureDeferred(h.factory.shutdown())
    for _, transport in conns:
        assert close_code(transport.take()) == 1001
    assert h.app.hub.listener_count == 0
    conns[0][0].dataReceived(client_frame(struct.pack("!H", 1001), opcode=8))
    h.clock.advance(0)
    assert len(h.factory.connections) == 2 and not done.called
    h.clock.advance(CLOSE_GRACE_S)
    h.clock.advance(0)
    assert done.called and not h.factory.connections
    assert h.clock.getDelayedCalls() == []
    assert h.factory.buildProtocol(None) is None  # no new connections while stopping


def test_one_encoding_per_view(h: Harness) -> None:
    """Fan-out encodes and frames a change once per (accounts, dataTypes) view:
    connections with the same view are sent the very same frame bytes."""
    alice = h.store.add("alice", "A")
    sent: list[bytes] = []
    conns = [enabled(h, alice) for _ in range(3)]

    def capture(data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        sent.append(data)

    for proto, _ in conns:
        proto.sendData = capture  # type: ignore[method-assign]
    h.publish({"A": {"Email": "e1"}})
    assert len(sent) == 3 and sent[0] is sent[1] is sent[2]
    assert sent[0][:1] == b"\x81" and b'"Email":"e1"' in sent[0]


def test_huge_frame_header_closes_1009_without_buffering(h: Harness) -> None:
    """WS-22, C-WS-4: a frame header announcing 100 MB (over the 2 x maxSizeRequest cap)
    gets Close 1009 at once; payload bytes that follow are discarded, not buffered."""
    alice = h.store.add("alice", "A")
    proto, transport = h.connect(alice)
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 100_000_000) + b"\0\0\0\0"
    proto.dataReceived(header)
    assert close_code(transport.take()) == 1009
    proto.dataReceived(b"x" * 1_000_000)
    assert not proto.frame_data and len(proto.data) < 1_000_000
    h.clock.advance(CLOSE_GRACE_S)  # the peer never answers our Close: aborted on our clock
    assert transport.aborted


def test_session_state_memo_follows_registry_generation(h: Harness) -> None:
    """The Response's sessionState is always current: the App memoizes it per principal
    and registry generation, and a capability change moves it (SES-11/SES-16)."""
    alice = h.store.add("alice", "A")
    proto, transport = h.connect(alice)
    h.send(proto, echo(rid="1"))
    h.send(proto, echo(rid="2"))
    first, second = transport.messages()
    assert first["sessionState"] == second["sessionState"] == h.app.session_state(alice)
    h.app.registry.add_capability("https://example.com/x", {"v": 1})
    h.send(proto, echo(rid="3"))
    (third,) = transport.messages()
    assert third["sessionState"] == h.app.session_state(alice) != first["sessionState"]


def request_frame(rid: str, **args: Any) -> bytes:
    return client_frame(json.dumps(echo(rid=rid, **args), ensure_ascii=False).encode())


def test_whole_frames_in_one_chunk_are_answered_in_order(h: Harness) -> None:
    """WS-8, WS-16: frames that arrive together (a small request, a pong, a request over 125
    bytes with non-ASCII text, a client ping, another request) are all handled, in order,
    and the ping is answered with a pong carrying its payload (RFC 6455 §5.5.3)."""
    alice = h.store.add("alice", "A")
    proto, transport = h.connect(alice)
    chunk = (request_frame("1") + client_frame(b"", opcode=10)
             + request_frame("2", text="é€😀" * 40) + client_frame(b"hb", opcode=9)
             + request_frame("3"))
    proto.dataReceived(chunk)
    frames = transport.take()
    assert [op for op, _ in frames] == [1, 1, 10, 1]
    assert frames[2][1] == b"hb"
    ids = [json.loads(p)["requestId"] for op, p in frames if op == 1]
    assert ids == ["1", "2", "3"]
    second = json.loads(frames[1][1])
    assert second["methodResponses"][0][1] == {"text": "é€😀" * 40}


def test_a_frame_split_across_chunks_is_reassembled(h: Harness) -> None:
    """A chunk that ends inside a frame: the whole frames before it are answered at once,
    the split one when its last byte arrives, and later frames still in order."""
    alice = h.store.add("alice", "A")
    proto, transport = h.connect(alice)
    whole, split = request_frame("1"), request_frame("2", pad="x" * 300)
    proto.dataReceived(whole + split[:7])
    assert [json.loads(p)["requestId"] for _, p in transport.take()] == ["1"]
    proto.dataReceived(split[7:-1])
    assert transport.take() == []
    proto.dataReceived(split[-1:] + request_frame("3"))
    assert [json.loads(p)["requestId"] for _, p in transport.take()] == ["2", "3"]


def test_unmasked_client_frame_is_a_protocol_error(h: Harness) -> None:
    """RFC 6455 §5.1: a client frame without a mask closes the connection (1002); it is
    never processed as a request."""
    alice = h.store.add("alice", "A")
    proto, transport = h.connect(alice)
    payload = json.dumps(echo(rid="1")).encode()
    proto.dataReceived(bytes([0x81, len(payload)]) + payload)
    frames = transport.take()
    assert [op for op, _ in frames] == [8] and close_code(frames) == 1002


def test_invalid_utf8_after_a_good_request_closes_1007(h: Harness) -> None:
    """WS-12 / RFC 6455 §8.1: the request before the bad frame is answered, then 1007."""
    alice = h.store.add("alice", "A")
    proto, transport = h.connect(alice)
    proto.dataReceived(request_frame("1") + client_frame(b'{"@type":"Request","x":"\xff"}'))
    frames = transport.take()
    assert [op for op, _ in frames] == [1, 8]
    assert json.loads(frames[0][1])["requestId"] == "1" and close_code(frames) == 1007
