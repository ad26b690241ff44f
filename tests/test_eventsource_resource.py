"""Clock-driven tests of the EventSource resource: the whole request path (bearer auth,
parameters, limit, catch-up) on a fake store and a fake connection, no sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.auth.passwords import token_digest
from jmappushd.core.hub import Change
from jmappushd.core.position import make_token
from jmappushd.daemon.service import build_app
from jmappushd.store.records import Account, TokenRecord, User
from jmappushd.transports.eventsource.registry import StreamRegistry
from jmappushd.transports.eventsource.resource import EventSourceResource
from tests.sse_parser import Event, EventParser
from tests.support import make_config, no_threads

TOKEN = "jmp_test-token"
USER = User("u1", "alice", "hash", "A", 0.0)


class FakeStore:
    """Bearer-token login for one user with account A, and a controllable catch-up."""

    def __init__(self) -> None:
        self.since: defer.Deferred[Any] | None = None

    def position(self) -> defer.Deferred[tuple[str, int]]:
        return defer.succeed(("ep", 5))

    def find_token(self, digest: bytes) -> defer.Deferred[Any]:
        found = (TokenRecord("t1", "u1", 0.0, ""), USER) if digest == token_digest(TOKEN) else None
        return defer.succeed(found)

    def get_user_by_id(self, user_id: str) -> defer.Deferred[Any]:
        return defer.succeed(USER if user_id == "u1" else None)

    def accounts_for_user(self, user_id: str) -> defer.Deferred[Any]:
        return defer.succeed([Account("A", "alice", True)])

    def changes_since(self, seq: int, account_ids: Any) -> defer.Deferred[Any]:
        self.since = defer.Deferred()
        return self.since

    def current_states(self, account_ids: Any) -> defer.Deferred[Any]:
        return defer.succeed({"A": {"Email": "full", "Mailbox": "m0"}})


class Setup:
    def __init__(self, tmp_path: Path, section: str = "event-source-throttle = 0") -> None:
        self.clock = Clock()
        self.store = FakeStore()
        config = make_config(tmp_path, sections={"event-source": section})
        self.app = build_app(config, self.clock, self.store, no_threads)  # type: ignore[arg-type]
        defer.ensureDeferred(self.app.hub.start())
        self.registry = StreamRegistry(self.app.store)
        self.resource = EventSourceResource(self.app, self.clock, self.registry)

    def get(self, query: str, **headers: str) -> tuple[Request, DummyChannel]:
        channel = DummyChannel()
        request = Request(channel)
        request.method = b"GET"
        request.clientproto = b"HTTP/1.0"
        request.args = {}
        for part in query.split("&"):
            key, _, value = part.partition("=")
            request.args.setdefault(key.encode(), []).append(value.encode())
        request.requestHeaders.setRawHeaders(b"Authorization", [f"Bearer {TOKEN}".encode()])
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name.replace("_", "-").encode(),
                                                 [value.encode()])
        self.resource.render(request)
        return request, channel

    def announce(self, seq: int, changed: dict[str, dict[str, str]]) -> str:
        token = make_token("ep", seq)
        self.app.hub._bus.announce(Change(seq, token, changed))
        return token


def events(channel: DummyChannel) -> list[Event]:
    raw = channel.transport.written.getvalue()
    return EventParser().feed(raw.split(b"\r\n\r\n", 1)[1])


def test_huge_ping_is_clamped_to_ping_max(tmp_path: Path) -> None:
    """ES-6, ES-7, C-ES-1: ping=100000 runs at ping-max (300 s) and says so in the ping."""
    s = Setup(tmp_path)
    _, channel = s.get("types=*&closeafter=no&ping=100000")
    s.clock.advance(299)
    assert events(channel) == []
    s.clock.advance(1)
    assert [json.loads(e.data) for e in events(channel)] == [{"interval": 300}]


def test_small_ping_is_raised_to_ping_min(tmp_path: Path) -> None:
    """ES-7, C-ES-1: ping=1 runs at ping-min (30 s by default)."""
    s = Setup(tmp_path)
    _, channel = s.get("types=*&closeafter=no&ping=1")
    s.clock.advance(29)
    assert events(channel) == []
    s.clock.advance(1)
    assert [json.loads(e.data) for e in events(channel)] == [{"interval": 30}]


def test_change_during_catch_up_is_not_lost(tmp_path: Path) -> None:
    """ES-10: the stream subscribes before the catch-up query, so a change published while
    the query runs still arrives, after the catch-up event."""
    s = Setup(tmp_path)
    _, channel = s.get("types=*&closeafter=no&ping=0", Last_Event_ID=make_token("ep", 2))
    assert s.store.since is not None and s.app.hub.listener_count == 1
    live = s.announce(6, {"A": {"Email": "s6"}})
    assert events(channel) == []
    s.store.since.callback({"A": {"Email": "s4", "Thread": "t4"}})
    got = events(channel)
    assert [json.loads(e.data)["changed"] for e in got] == [
        {"A": {"Email": "s4", "Thread": "t4"}}, {"A": {"Email": "s6"}}]
    assert [e.id for e in got] == [make_token("ep", 5), live]


def test_unknown_last_event_id_gives_full_state_of_requested_types(tmp_path: Path) -> None:
    """C-ES-3: an unknown token yields one event with the current state of the requested
    types only."""
    s = Setup(tmp_path)
    _, channel = s.get("types=Mailbox&closeafter=no&ping=0", Last_Event_ID="other-1")
    (event,) = events(channel)
    assert json.loads(event.data)["changed"] == {"A": {"Mailbox": "m0"}}


def test_connection_limit(tmp_path: Path) -> None:
    """Over max-connections-per-user → 429 problem details, and nothing is subscribed."""
    s = Setup(tmp_path, "max-connections-per-user = 2")
    s.get("types=*&closeafter=no&ping=0")
    s.get("types=*&closeafter=no&ping=0")
    request, channel = s.get("types=*&closeafter=no&ping=0")
    assert request.code == 429
    body = channel.transport.written.getvalue().split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["status"] == 429
    assert s.app.hub.listener_count == 2


def test_no_streams_are_accepted_during_shutdown(tmp_path: Path) -> None:
    """After the shutdown hook ran, a new request gets 503 rather than a stream."""
    s = Setup(tmp_path)
    first, _ = s.get("types=*&closeafter=no&ping=30")
    s.registry.close_all()
    assert first.finished
    request, _ = s.get("types=*&closeafter=no&ping=30")
    assert request.code == 503
    assert s.app.hub.listener_count == 0 and s.clock.getDelayedCalls() == []
