"""The transport-neutral JMAP WebSocket session, on a fake frame sink (no Autobahn)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from jmappushd.auth.authenticator import Principal
from jmappushd.core.connections import EndReason
from jmappushd.core.feed import FeedContext
from jmappushd.core.hub import Change, Hub, LocalBus
from jmappushd.core.inflight import InFlightRequests
from jmappushd.jmap.response import Response, encode_invocation
from jmappushd.store.memory import MemoryStore
from jmappushd.store.records import Account
from jmappushd.transports.websocket.conversation import Conversation, ConversationContext
from jmappushd.transports.websocket.push import push_views
from tests.test_websocket_helpers import server_frames


class Sink:
    """Records whole frames and closes, like an HTTP/1.1 or HTTP/2 stream would carry."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: list[tuple[int, str]] = []
        self.writable = True

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))
        self.writable = False

    def messages(self) -> list[dict[str, Any]]:
        out = [json.loads(p) for f in self.frames for op, p in server_frames(f) if op == 1]
        self.frames.clear()
        return out


class Processor:
    """Answers every request at once or, with ``hold``, with a Deferred it keeps."""

    def __init__(self) -> None:
        self.hold = False
        self.pending: list[defer.Deferred[Response]] = []

    def process_now(self, request: Any, principal: Principal, state: str,
                    reserve: int = 0) -> Response | defer.Deferred[Response]:
        if self.hold:
            d: defer.Deferred[Response] = defer.Deferred()
            self.pending.append(d)
            return d
        return Response([encode_invocation("Core/echo", {"who": principal.user_id}, "c1")],
                        state)


class Store(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.open()  # for the token key in its metadata

    def position(self) -> defer.Deferred[tuple[str, int]]:
        return defer.succeed(("ep", 0))


class Env:
    def __init__(self, max_concurrent: int = 4, in_flight: InFlightRequests | None = None
                 ) -> None:
        self.clock = Clock()
        self.bus = LocalBus()
        self.hub = Hub(Store(), self.bus)
        defer.ensureDeferred(self.hub.start())
        self.processor = Processor()
        self.errors: list[str] = []
        self.sent = 0
        self.ctx = ConversationContext(
            processor=self.processor, session_state=lambda p: "s0",
            max_size_request=10_000,
            in_flight=InFlightRequests(max_concurrent) if in_flight is None else in_flight,
            feeds=FeedContext(self.clock, self.hub, 0.0, push_views()),
            events_sent=self, count_error=self.errors.append)
        self.sink = Sink()
        self.principal = Principal("u1", "alice", "token:t1", (Account("A", "alice", True),),
                                   "A")
        self.conversation = Conversation(self.ctx, self.sink, self.principal)
        self.seq = 0

    def inc(self) -> None:
        self.sent += 1

    def send(self, obj: Any) -> None:
        self.conversation.message(json.dumps(obj).encode())

    def publish(self, changed: dict[str, dict[str, str]]) -> str:
        """Announce; returns the pushState alice's connection gets with it."""
        self.seq += 1
        self.bus.announce(Change(self.seq, changed))
        return self.hub.tokens.shared("u1", self.seq)


REQUEST = {"@type": "Request", "id": "r1", "using": ["urn:ietf:params:jmap:core"],
           "methodCalls": [["Core/echo", {}, "c1"]]}


def test_request_gets_a_response_frame() -> None:
    """WS-9: a Request is answered with a Response carrying its id, as one whole frame."""
    env = Env()
    env.send(REQUEST)
    (response,) = env.sink.messages()
    assert response["@type"] == "Response" and response["requestId"] == "r1"


def test_in_flight_limit_answers_request_error() -> None:
    """WS-15: beyond maxConcurrentRequests a RequestError (limit) comes back at once."""
    env = Env(max_concurrent=1)
    env.processor.hold = True
    env.send(REQUEST)
    env.send({**REQUEST, "id": "r2"})
    (error,) = env.sink.messages()
    assert error["@type"] == "RequestError" and error["requestId"] == "r2"
    assert error["limit"] == "maxConcurrentRequests" and env.errors == ["limit"]
    env.processor.pending[0].callback(Response([], "s0"))
    assert env.sink.messages()[0]["requestId"] == "r1"


def test_push_enable_and_disable_through_the_sink() -> None:
    """WS-18, WS-20: enabled, a change arrives as a StateChange with pushState; after
    disable, nothing more is sent and the hub is left."""
    env = Env()
    env.send({"@type": "WebSocketPushEnable"})
    token = env.publish({"A": {"Email": "e1"}})
    assert env.sink.messages() == [
        {"@type": "StateChange", "changed": {"A": {"Email": "e1"}}, "pushState": token}]
    assert env.sent == 1
    env.send({"@type": "WebSocketPushDisable"})
    env.publish({"A": {"Email": "e2"}})
    assert env.sink.messages() == [] and env.hub.listener_count == 0


def test_end_maps_reasons_to_close_codes() -> None:
    """C-WS-5: revoked credentials close with 1008; shutdown with 1001."""
    revoked, shutdown = Env(), Env()
    revoked.conversation.end(EndReason.REVOKED)
    shutdown.conversation.end(EndReason.SHUTDOWN)
    assert revoked.sink.closed[0][0] == 1008 and shutdown.sink.closed[0][0] == 1001


def test_grants_changed_refreshes_principal_and_push() -> None:
    """New grants: later requests use the new principal and push follows the accounts."""
    env = Env()
    env.send({"@type": "WebSocketPushEnable"})
    env.conversation.grants_changed((Account("B", "bob", False),))
    assert env.conversation.principal.account_ids == {"B"}
    env.publish({"A": {"Email": "a"}})
    token = env.publish({"B": {"Email": "b"}})
    assert env.sink.messages() == [
        {"@type": "StateChange", "changed": {"B": {"Email": "b"}}, "pushState": token}]


def test_nothing_is_written_to_a_closed_sink_and_pause_holds_pushes() -> None:
    """A paused session merges pushes until resumed; a sink that is no longer writable
    gets no frame at all."""
    env = Env()
    env.send({"@type": "WebSocketPushEnable"})
    env.conversation.pause()
    env.publish({"A": {"Email": "e1"}})
    token = env.publish({"A": {"Email": "e2"}})
    assert env.sink.messages() == []
    env.conversation.resume()
    assert env.sink.messages() == [
        {"@type": "StateChange", "changed": {"A": {"Email": "e2"}}, "pushState": token}]
    env.sink.writable = False
    env.publish({"A": {"Email": "e3"}})
    env.send(REQUEST)
    assert env.sink.frames == []


def test_in_flight_limit_is_shared_between_conversations() -> None:
    """WS-15, issue 11: two sockets of one user share one count (App.inflight), so the
    second socket's request is refused while the first holds the only slot; a failed
    request frees its slot too."""
    shared = InFlightRequests(1)
    first, second = Env(in_flight=shared), Env(in_flight=shared)
    first.processor.hold = True
    first.send(REQUEST)
    second.send({**REQUEST, "id": "r2"})
    (error,) = second.sink.messages()
    assert error["@type"] == "RequestError" and error["limit"] == "maxConcurrentRequests"
    first.processor.pending[0].errback(RuntimeError("boom"))
    assert first.sink.messages()[0]["status"] == 500
    second.send({**REQUEST, "id": "r3"})
    assert second.sink.messages()[0]["requestId"] == "r3"
    assert shared.count("u1") == 0
