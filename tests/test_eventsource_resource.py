"""Clock-driven tests of the EventSource resource: the whole request path (bearer auth,
parameters, limit, catch-up) on the memory store and a fake connection, no sockets."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.auth.passwords import token_digest
from jmappushd.core.hub import Change
from jmappushd.daemon.service import build_app
from jmappushd.store import MemoryStore
from jmappushd.transports.eventsource.registry import StreamRegistry
from jmappushd.transports.eventsource.resource import EventSourceResource
from tests.sse_parser import Event, EventParser
from tests.store_backends import counting_ids, fired
from tests.support import make_config, no_threads

TOKEN = "jmp_test-token"


class CatchUpGate(MemoryStore):
    """The memory store, with each catch-up answer held until the test fires ``since``.

    alice (u1) reads her account A and holds the bearer token TOKEN; the change log is
    at seq 5 and A's current states are Mailbox m0, Email s4, Thread t4.
    """

    def __init__(self) -> None:
        super().__init__(make_id=counting_ids())
        self.open()
        self.add_user("alice", "hash", "A")
        self.create_token("alice", token_digest(TOKEN))
        for changed in ({"Mailbox": "m0"}, {"Email": "e2"}, {"Thread": "t4"}, {"Email": "s4"}):
            self.record_changes({"A": changed})
        self.record_changes({"Z": {"Email": "other account"}})
        self.since: defer.Deferred[None] | None = None

    def changes_since(self, seq: int, account_ids: Collection[str]
                      ) -> defer.Deferred[dict[str, dict[str, str]]]:
        answer = super().changes_since(seq, account_ids)
        gate: defer.Deferred[None] = defer.Deferred()
        self.since = gate
        return gate.addCallback(lambda _: answer)


class Setup:
    def __init__(self, tmp_path: Path, section: str = "event-source-throttle = 0") -> None:
        self.clock = Clock()
        self.store = CatchUpGate()
        config = make_config(tmp_path, sections={"event-source": section})
        self.app = build_app(config, self.clock, self.store, no_threads)
        defer.ensureDeferred(self.app.hub.start())
        user = fired(self.store.get_user("alice"))
        assert user is not None
        self.user_id = user.id
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
        """Announce; returns alice's token for it (her streams share one per change)."""
        self.app.hub._bus.announce(Change(seq, changed))
        return self.app.hub.tokens.shared(self.user_id, seq)

    def token(self, position: int) -> str:
        return self.app.hub.tokens.seal(self.user_id, position)


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
    _, channel = s.get("types=*&closeafter=no&ping=0", Last_Event_ID=s.token(2))
    assert s.store.since is not None and s.app.hub.listener_count == 1
    live = s.announce(6, {"A": {"Email": "s6"}})
    assert events(channel) == []
    s.store.since.callback(None)  # the answer: {"A": {"Email": "s4", "Thread": "t4"}}
    got = events(channel)
    assert [json.loads(e.data)["changed"] for e in got] == [
        {"A": {"Email": "s4", "Thread": "t4"}}, {"A": {"Email": "s6"}}]
    assert [s.app.hub.tokens.open(s.user_id, e.id) for e in got] == [5, 6]
    assert got[1].id == live


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
