"""JMAP over WebSocket on HTTP/2 (RFC 8441), in memory: an ``h2`` client with ``wsproto``
framing talks to a :class:`JMAPSite` whose channel negotiated ``h2``, in front of the real
handshake resource and factory on an App whose clock is a ``task.Clock``.

Checklist: H2WS-1 (the setting), H2WS-2 (CONNECT → 200 + ``jmap``), WS-4, WS-5, WS-15,
WS-18, WS-19, WS-21, WS-22, C-WS-1, C-WS-2, C-WS-4.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.errors
import h2.events
import h2.settings
import pytest
from twisted.web.resource import Resource
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    TextMessage,
)

from jmappushd.auth.passwords import new_bearer_token, token_digest
from jmappushd.transports.websocket.h2session import CLOSE_GRACE_S, H2WebSocket
from jmappushd.transports.websocket.handshake import HandshakeResource
from jmappushd.web import h2connect
from jmappushd.web.site import JMAPSite
from jmappushd.web.wellknown import WellKnownDirectory
from tests.store_backends import fired
from tests.test_http2_channel import Peer, Streams
from tests.test_websocket_helpers import Harness, echo, write_config

WS = ("ws-heartbeat-interval = 5\nws-client-timeout = 12\nws-throttle = 0\n"
      "max-connections-per-user = 2\nallowed-origins = https://app.example")
CONNECT_SETTING = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL


class H2Harness:
    """The WebSocket harness's App and factory behind a JMAP-like site, and h2 peers."""

    def __init__(self, tmp_path: Path, websocket: str = WS) -> None:
        self.h = Harness(write_config(tmp_path, websocket, "max-size-request = 4000"))
        self.clock = self.h.clock
        self.handshake = HandshakeResource(self.h.app, self.h.factory)
        root = Resource()
        jmap = Resource()
        jmap.putChild(b"ws", self.handshake)
        root.putChild(b"jmap", jmap)
        self.streams = Streams()
        root.putChild(b"stream", self.streams)
        root.putChild(b".well-known", WellKnownDirectory(Resource(), self.handshake))
        self.site = JMAPSite(root, max_body=4000, name="jmap", access_log=False,
                             header_timeout=10, http2=True, reactor=self.clock,
                             timers=self.h.app.wheel)
        self.alice = self.h.store.add("alice", "A")
        self.token = new_bearer_token()
        fired(self.h.store.create_token("alice", token_digest(self.token)))

    def peer(self) -> Peer:
        return Peer(self.clock, self.site)

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def open(self, peer: Peer, path: str = "/jmap/ws", **headers: str) -> WSClient:
        ws = WSClient(peer, path, {"sec-websocket-version": "13",
                                   "sec-websocket-protocol": "jmap", **self.auth, **headers})
        return ws


class WSClient:
    """One extended CONNECT on ``peer`` and a wsproto client connection on its stream."""

    def __init__(self, peer: Peer, path: str, headers: dict[str, str],
                 protocol: str | None = "websocket") -> None:
        self.peer = peer
        self.ws = Connection(ConnectionType.CLIENT)
        self.stream_id: int = peer.conn.get_next_available_stream_id()
        pseudo = [(":method", "CONNECT"), (":scheme", "https"), (":path", path),
                  (":authority", "localhost")]
        if protocol is not None:
            pseudo.insert(1, (":protocol", protocol))
        peer.conn.send_headers(self.stream_id, pseudo + [
            (k, v) for k, v in headers.items() if v is not None])
        self._seen = 0
        self._partial = ""
        self.events: list[Event] = []
        self.pump()

    @property
    def status(self) -> int | None:
        return self.peer.response(self.stream_id)[0]

    @property
    def headers(self) -> dict[bytes, bytes]:
        for event in self.peer.events:
            if (isinstance(event, h2.events.ResponseReceived)
                    and event.stream_id == self.stream_id):
                return dict(event.headers)
        return {}

    @property
    def ended(self) -> bool:
        return any(getattr(e, "stream_id", None) == self.stream_id
                   and isinstance(e, h2.events.StreamEnded | h2.events.StreamReset)
                   for e in self.peer.events)

    @property
    def reset(self) -> h2.events.StreamReset | None:
        for e in self.peer.events:
            if isinstance(e, h2.events.StreamReset) and e.stream_id == self.stream_id:
                return e
        return None

    def pump(self, ack: bool = True) -> list[Event]:
        """Exchange bytes; feed new DATA of this stream to wsproto; return new events."""
        self.peer.flush()
        new: list[Event] = []
        for event in self.peer.events[self._seen:]:
            if (isinstance(event, h2.events.DataReceived)
                    and event.stream_id == self.stream_id):
                if ack:
                    self.peer.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id)
                if event.data:  # the END_STREAM may come on an empty DATA frame
                    self.ws.receive_data(event.data)
                new += self._whole(self.ws.events())
        self._seen = len(self.peer.events)
        if ack:
            self.peer.flush()
        self.events += new
        return new

    def _whole(self, events: Iterator[Event]) -> list[Event]:
        """wsproto hands text over as it arrives: join each message's parts."""
        out: list[Event] = []
        for event in events:
            if isinstance(event, TextMessage):
                self._partial += event.data
                if not event.message_finished:
                    continue
                event = TextMessage(self._partial)
                self._partial = ""
            out.append(event)
        return out

    def send(self, data: bytes) -> list[Event]:
        self.peer.conn.send_data(self.stream_id, data)
        return self.pump()

    def send_json(self, obj: Any) -> list[Any]:
        events = self.send(self.ws.send(TextMessage(json.dumps(obj))))
        return messages(events)

    def reset_stream(self) -> None:
        self.peer.conn.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
        self.pump()


def messages(events: list[Event]) -> list[Any]:
    return [json.loads(e.data) for e in events if isinstance(e, TextMessage)]


def close_codes(events: list[Event]) -> list[int]:
    return [e.code for e in events if isinstance(e, CloseConnection)]


@pytest.fixture
def hh(tmp_path: Path) -> Iterator[H2Harness]:
    yield H2Harness(tmp_path)


def remote_setting(peer: Peer) -> int:
    return int(peer.conn.remote_settings[CONNECT_SETTING])


def test_connect_protocol_setting_is_advertised(hh: H2Harness) -> None:
    """H2WS-1 (RFC 8441 §3): the server's first SETTINGS frame carries
    SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, never 0 before it."""
    peer = hh.peer()
    changes = [e.changed_settings[CONNECT_SETTING].new_value for e in peer.events
               if isinstance(e, h2.events.RemoteSettingsChanged)
               and CONNECT_SETTING in e.changed_settings]
    assert changes == [1]
    assert remote_setting(peer) == 1


def test_echo_over_an_h2_stream(hh: H2Harness) -> None:
    """H2WS-2, WS-5: an extended CONNECT to /jmap/ws is answered :status 200 with
    sec-websocket-protocol jmap (no END_STREAM); a Request gets its Response with the
    same id on the stream; the access-log member counts the user."""
    peer = hh.peer()
    ws = hh.open(peer)
    assert ws.status == 200
    assert ws.headers[b"sec-websocket-protocol"] == b"jmap"
    assert b"sec-websocket-accept" not in ws.headers
    assert not ws.ended
    (answer,) = ws.send_json(echo(rid="r1", hello="h2"))
    assert answer["@type"] == "Response" and answer["requestId"] == "r1"
    assert answer["methodResponses"] == [["Core/echo", {"hello": "h2"}, "c1"]]
    (member,) = hh.h.factory.connections
    assert isinstance(member, H2WebSocket)
    assert hh.h.factory.connections_of(hh.alice.user_id) == 1


def test_well_known_uri_over_h2(hh: H2Harness) -> None:
    """RFC 8307 over RFC 8441: the same session at /.well-known/jmap."""
    ws = hh.open(hh.peer(), "/.well-known/jmap")
    assert ws.status == 200
    (answer,) = ws.send_json(echo())
    assert answer["@type"] == "Response"


def test_request_error_over_h2(hh: H2Harness) -> None:
    """WS-13/C-WS-3: not JSON, and an unknown @type, are RequestErrors on the stream,
    which stays open."""
    ws = hh.open(hh.peer())
    events = ws.send(ws.ws.send(TextMessage("{not json")))
    (problem,) = messages(events)
    assert problem["@type"] == "RequestError" and problem["type"].endswith(":notJSON")
    (problem,) = ws.send_json({"@type": "Nope", "id": "x"})
    assert problem["@type"] == "RequestError" and problem["requestId"] == "x"
    (answer,) = ws.send_json(echo())
    assert answer["@type"] == "Response"


def test_push_enable_and_state_change(hh: H2Harness) -> None:
    """WS-18, WS-19: after WebSocketPushEnable a publish reaches the stream as a
    StateChange with the user's pushState."""
    ws = hh.open(hh.peer())
    assert ws.send_json({"@type": "WebSocketPushEnable", "dataTypes": None}) == []
    change = hh.h.publish({"A": {"Email": "e1"}})
    (pushed,) = messages(ws.pump())
    assert pushed == {"@type": "StateChange", "changed": {"A": {"Email": "e1"}},
                      "pushState": hh.h.token(hh.alice, change)}
    assert ws.send_json({"@type": "WebSocketPushDisable"}) == []
    hh.h.publish({"A": {"Email": "e2"}})
    assert messages(ws.pump()) == []


def test_heartbeat_and_client_timeout(hh: H2Harness) -> None:
    """ws-heartbeat-interval: a Ping at 5 s; traffic keeps the session; 12 s of silence
    closes with 1001, the client's Close reply ends the stream and the registry."""
    ws = hh.open(hh.peer())
    hh.clock.advance(4.9)
    assert not [e for e in ws.pump() if isinstance(e, Ping)]
    hh.clock.advance(0.1)
    assert [e for e in ws.pump() if isinstance(e, Ping)]
    ws.send(ws.ws.send(Ping().response()))  # the pong: alive at t=5
    hh.clock.advance(11.9)
    assert close_codes(ws.pump()) == []
    hh.clock.advance(0.1)
    assert close_codes(ws.pump()) == [1001]
    assert not ws.ended
    ws.send(ws.ws.send(CloseConnection(code=1001)))
    assert ws.ended and not hh.h.factory.connections


def test_silent_peer_is_reset_after_the_close_grace(hh: H2Harness) -> None:
    """A peer that never answers our Close gets RST_STREAM(CANCEL) after the grace."""
    ws = hh.open(hh.peer())
    hh.h.factory.registry.close_all()
    assert close_codes(ws.pump()) == [1001]
    hh.clock.advance(CLOSE_GRACE_S)
    ws.pump()
    assert ws.reset is not None and ws.reset.error_code == h2.errors.ErrorCodes.CANCEL
    assert not hh.h.factory.connections


def test_client_close_is_echoed_and_ends_the_stream(hh: H2Harness) -> None:
    """The client's Close (1000) is answered with 1000 and END_STREAM; the stream is
    then reset with NO_ERROR, freeing its slot."""
    ws = hh.open(hh.peer())
    events = ws.send(ws.ws.send(CloseConnection(code=1000)))
    assert close_codes(events) == [1000]
    assert ws.ended and not hh.h.factory.connections


def test_per_user_limit_over_h2(hh: H2Harness) -> None:
    """max-connections-per-user counts HTTP/2 WebSockets: the third gets 429."""
    peer = hh.peer()
    first, second = hh.open(peer), hh.open(peer)
    third = hh.open(peer)
    assert (first.status, second.status, third.status) == (200, 200, 429)
    assert third.ended
    first.reset_stream()
    assert hh.open(peer).status == 200


@pytest.mark.parametrize(("headers", "status"), [
    ({"authorization": None}, 401),
    ({"sec-websocket-protocol": "chat"}, 400),
    ({"sec-websocket-version": "8"}, 400),
    ({"origin": "https://evil.example"}, 403),
])
def test_refusals_are_h2_responses(hh: H2Harness, headers: dict[str, Any], status: int
                                   ) -> None:
    """WS-4, C-WS-1, WS-21: the HTTP/1.1 handshake's refusals, as HTTP/2 responses with
    the same codes (a problem body), and the stream then ends; the connection serves on."""
    peer = hh.peer()
    ws = WSClient(peer, "/jmap/ws", {"sec-websocket-version": "13",
                                     "sec-websocket-protocol": "jmap",
                                     **hh.auth, **headers})
    assert ws.status == status
    _, body, ended = peer.response(ws.stream_id)
    assert ended and json.loads(body)["status"] == status
    if status == 401:
        assert b"www-authenticate" in ws.headers
    assert not hh.h.factory.connections
    assert hh.open(peer).status == 200


@pytest.mark.parametrize(("protocol", "status"), [(None, 405), ("chat", 501)])
def test_other_connects_are_refused(hh: H2Harness, protocol: str | None, status: int
                                    ) -> None:
    """A CONNECT without :protocol (a proxy tunnel), or with another protocol, is refused
    on its stream; a GET of /jmap/ws over h2 gets 405 (it cannot upgrade)."""
    peer = hh.peer()
    sid = peer.conn.get_next_available_stream_id()
    headers = [(":method", "CONNECT"), (":authority", "localhost:443")]
    if protocol is not None:
        headers += [(":protocol", protocol), (":scheme", "https"), (":path", "/jmap/ws")]
    peer.conn.send_headers(sid, headers)
    peer.flush()
    assert peer.response(sid)[0] == status
    get = peer.request("GET", "/jmap/ws")
    code, body, ended = peer.response(get)
    assert (code, ended) == (405, True) and json.loads(body)["status"] == 405
    assert hh.open(peer).status == 200


def test_connect_refused_when_not_advertised(hh: H2Harness, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """Where the RFC 8441 check failed, the setting is not sent and an extended CONNECT
    the server did not invite is refused with 400; HTTP/2 itself is still served."""
    monkeypatch.setattr(h2connect, "_checked", False)
    peer = hh.peer()
    assert remote_setting(peer) == 0
    sid = peer.conn.get_next_available_stream_id()
    peer.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                 (":scheme", "https"), (":path", "/jmap/ws"),
                                 (":authority", "localhost")])
    peer.flush()
    assert peer.response(sid)[0] == 400
    assert peer.response(peer.request("GET", "/stream"))[0] == 200
    assert not hh.h.factory.connections


def test_streams_multiplexed_and_one_reset(hh: H2Harness) -> None:
    """Two WebSockets and a streamed response share one h2 connection; resetting one
    WebSocket's stream ends only its session, the others go on."""
    peer = hh.peer()
    one, two = hh.open(peer), hh.open(peer)
    stream = peer.request("GET", "/stream")
    for ws in (one, two):
        assert ws.send_json({"@type": "WebSocketPushEnable"}) == []
    one.reset_stream()
    assert hh.h.factory.connections_of(hh.alice.user_id) == 1
    hh.h.publish({"A": {"Email": "e9"}})
    (pushed,) = messages(two.pump())
    assert pushed["changed"] == {"A": {"Email": "e9"}}
    (hh.streams.open[0]).write(b": still\n\n")
    peer.flush()
    assert peer.response(stream)[1].endswith(b": still\n\n")
    assert not peer.goaway()


def test_binary_and_oversized_messages_close(hh: H2Harness) -> None:
    """C-WS-2: a binary message closes with 1003; C-WS-4: a message beyond twice
    maxSizeRequest (fragmented, so no single frame says so) closes with 1009."""
    peer = hh.peer()
    ws = hh.open(peer)
    assert close_codes(ws.send(ws.ws.send(BytesMessage(b"\x00")))) == [1003]
    big = hh.open(peer)
    for _ in range(3):
        events = big.send(big.ws.send(TextMessage("x" * 3000, message_finished=False)))
    assert close_codes(big.events) == [1009], events


def test_invalid_utf8_closes_1007(hh: H2Harness) -> None:
    """RFC 6455 §8.1: a text frame that is not UTF-8 closes with 1007 and ends the stream."""
    ws = hh.open(hh.peer())
    frame = bytes([0x81, 0x80 | 2]) + b"\x00\x00\x00\x00" + b"\xff\xfe"
    events = ws.send(frame)
    assert close_codes(events) == [1007]
    assert ws.ended and not hh.h.factory.connections


def test_slow_reader_holds_pushes(hh: H2Harness) -> None:
    """h2 flow control: a client that stops opening the stream's window gets no more
    than the window; the pushes held meanwhile are merged and sent when it reads again."""
    peer = hh.peer()
    ws = hh.open(peer)
    ws.send_json({"@type": "WebSocketPushEnable"})
    window = peer.conn.local_settings.initial_window_size
    for n in range(1000):
        hh.h.publish({"A": {"Email": f"e{n}"}})
        ws.pump(ack=False)
    sent = sum(e.flow_controlled_length for e in peer.events
               if isinstance(e, h2.events.DataReceived) and e.stream_id == ws.stream_id)
    assert window - 300 < sent <= window
    # The states pushed, not the whole JSON: a random pushState may contain "e999".
    pushed = [m["changed"]["A"]["Email"] for m in messages(ws.events)
              if m.get("@type") == "StateChange"]
    assert pushed and "e999" not in pushed
    for event in peer.events:  # now the client reads what it got
        if isinstance(event, h2.events.DataReceived) and event.stream_id == ws.stream_id:
            peer.conn.acknowledge_received_data(event.flow_controlled_length, ws.stream_id)
    ws.pump()
    ws.pump()
    assert messages(ws.events)[-1]["changed"] == {"A": {"Email": "e999"}}
    assert len(messages(ws.events)) < 1000  # the held ones were merged


def test_shutdown_closes_with_1001(hh: H2Harness) -> None:
    """At shutdown every HTTP/2 WebSocket gets 1001 and the registry empties once
    the clients answer."""
    ws = hh.open(hh.peer())
    done = hh.h.factory.registry.when_empty()
    hh.h.factory.registry.close_all()
    assert close_codes(ws.pump()) == [1001]
    ws.send(ws.ws.send(CloseConnection(code=1001)))
    assert done.called


def test_close_frame_payload_is_well_formed(hh: H2Harness) -> None:
    """The Close we send carries the code in network order (RFC 6455 §5.5.1)."""
    ws = hh.open(hh.peer())
    raw: list[bytes] = []
    hh.h.factory.registry.close_all()
    ws.peer.flush()
    for event in ws.peer.events:
        if isinstance(event, h2.events.DataReceived) and event.stream_id == ws.stream_id:
            raw.append(event.data)
    frame = raw[-1]
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1001


def test_which_resources_refuse_an_extended_connect() -> None:
    """A resource without CONNECT among its declared methods (``cors_methods``), or with
    only ``render_<METHOD>``s and no ``render_CONNECT``, refuses it with those methods;
    one with its own ``render`` and no declaration (the handshake, the JSON 404) decides
    itself."""

    class Declared(Resource):
        cors_methods = (b"POST",)

        def render(self, request: object) -> bytes:
            return b""

    class Dispatching(Resource):
        def render_GET(self, request: object) -> bytes:
            return b""

        render_HEAD = render_GET

    class Tunnelling(Dispatching):
        def render_CONNECT(self, request: object) -> bytes:
            return b""

    class Own(Resource):
        def render(self, request: object) -> bytes:
            return b""

    assert h2connect.connect_refused_by(Declared()) == (b"POST",)
    assert h2connect.connect_refused_by(Dispatching()) == (b"GET", b"HEAD")
    assert h2connect.connect_refused_by(Tunnelling()) is None
    assert h2connect.connect_refused_by(Own()) is None


def test_a_client_that_does_not_read_its_answers_is_stopped_by_flow_control(
        hh: H2Harness) -> None:
    """Both directions of h2 flow control with the direct DATA path: a client that sends
    requests but never opens the stream's window gets at most one window of answers,
    then its requests are no longer read (nor acknowledged), so it can send at most one
    window of them; memory stays bounded. Once it reads, every request is answered, in
    order."""
    peer = hh.peer()
    ws = hh.open(peer)
    sid = ws.stream_id
    window = peer.conn.local_settings.initial_window_size
    sent = 0
    for n in range(5000):
        data = ws.ws.send(TextMessage(json.dumps(echo(rid=f"r{n}"))))
        if peer.conn.local_flow_control_window(sid) < len(data):
            break  # the server stopped reading: our window to it is spent
        peer.conn.send_data(sid, data)
        sent += 1
        ws.pump(ack=False)
    else:
        raise AssertionError("the client was never stopped")
    got = sum(e.flow_controlled_length for e in peer.events
              if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
    assert window - 300 < got <= window
    answered = len(messages(ws.events))
    assert answered < sent
    (session,) = hh.h.factory.connections
    assert isinstance(session, H2WebSocket) and session._tunnel is not None
    assert sum(n for _, n in session._tunnel._early) <= window  # what it holds unread
    for event in peer.events:  # now it reads what it got, and each pump what follows
        if isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
            peer.conn.acknowledge_received_data(event.flow_controlled_length, sid)
    for _ in range(200):
        if len(messages(ws.events)) == sent:
            break
        ws.pump()
    assert [m["requestId"] for m in messages(ws.events)] == [f"r{n}" for n in range(sent)]


def test_a_blocked_transport_queues_frames_in_order(hh: H2Harness) -> None:
    """While TCP is blocked (the TLS transport paused the connection) nothing is framed
    directly: frames wait in the stream's queue, pushes are held and the client's
    requests are not read; on resume everything leaves in order."""
    peer = hh.peer()
    ws = hh.open(peer)
    (session,) = hh.h.factory.connections
    assert isinstance(session, H2WebSocket) and session._tunnel is not None
    conn = session._tunnel._conn
    conn.pauseProducing()
    before = peer.transport.value()
    session.send_frame(b"\x81\x05first")
    session.send_frame(b"\x81\x06second")
    assert len(conn._outboundStreamQueues[ws.stream_id]) == 2
    assert conn.conn.data_to_send() == b""  # nothing framed past the queue
    peer.conn.send_data(ws.stream_id, ws.ws.send(TextMessage(json.dumps(echo(rid="q")))))
    peer.channel.dataReceived(peer.conn.data_to_send())
    hh.clock.advance(0)
    assert peer.transport.value() == before  # no answer, no DATA while blocked
    conn.resumeProducing()
    events = ws.pump()
    texts = [e.data for e in events if isinstance(e, TextMessage)]
    assert texts[:2] == ["first", "second"]
    assert json.loads(texts[2])["requestId"] == "q"
