"""Clock-driven tests of one EventSource stream: throttling, pings, lifecycle, catch-up.

A real ``twisted.web.server.Request`` on a fake channel stands in for the
connection, a :class:`~twisted.internet.task.Clock` for time, and the hub is the
real one fed through its bus, so no socket and no thread is involved.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.core.hub import Change, Hub, LocalBus
from jmappushd.store import MemoryStore
from jmappushd.transports.eventsource.registry import StreamRegistry
from jmappushd.transports.eventsource.stream import EventStream, StreamContext
from tests.sse_parser import Event, EventParser
from tests.store_backends import open_memory_store


class Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


@dataclass
class Env:
    """A hub, a clock and a registry; ``publish`` announces a change as the store would."""

    throttle: float = 0.0
    clock: Clock = field(default_factory=Clock)
    bus: LocalBus = field(default_factory=LocalBus)
    store: MemoryStore = field(default_factory=open_memory_store)
    sent: Count = field(default_factory=Count)
    seq: int = 0

    def __post_init__(self) -> None:
        self.hub = Hub(self.store, self.bus)
        defer.ensureDeferred(self.hub.start())
        self.registry = StreamRegistry(self.store)
        self.ctx = StreamContext(self.clock, self.hub, self.throttle, self.sent,
                                 self.registry.discard)

    def publish(self, changed: Mapping[str, Mapping[str, str]]) -> str:
        """Announce; returns the token streams of user u1 get for it (shared per change)."""
        self.seq += 1
        self.bus.announce(Change(self.seq, changed))
        return self.hub.tokens.shared("u1", self.seq)

    def token(self, position: int, user: str = "u1") -> str:
        return self.hub.tokens.seal(user, position)

    def stream(self, *, accounts: tuple[str, ...] = ("A",), types: frozenset[str] | None = None,
               ping: int = 0, close_after: bool = False, user: str = "u1",
               credential: str = "password:u1") -> EventStream:
        channel = DummyChannel()
        request = Request(channel)
        request.test_channel = channel  # type: ignore[attr-defined]  # outlives disconnects
        request.method = b"GET"
        request.clientproto = b"HTTP/1.0"  # no chunking: the body is the raw event stream
        stream = EventStream(self.ctx, request, user_id=user, credential_id=credential,
                             account_ids=frozenset(accounts), types=types, interval=ping,
                             close_after=close_after)
        self.registry.add(stream)
        stream.open()
        return stream


def written(stream: EventStream) -> bytes:
    raw: bytes = stream.request.test_channel.transport.written.getvalue()  # type: ignore[attr-defined]
    return raw


def events(stream: EventStream) -> list[Event]:
    body = written(stream).split(b"\r\n\r\n", 1)[1]
    return EventParser().feed(body)


def states(stream: EventStream) -> list[dict[str, Any]]:
    return [json.loads(e.data)["changed"] for e in events(stream) if e.event == "state"]


def disconnect(stream: EventStream) -> None:
    stream.request.connectionLost(Failure(ConnectionDone()))


# -- opening ------------------------------------------------------------------------------


def test_open_flushes_headers_at_once() -> None:
    """ES-1, C-ES-5: 200, text/event-stream, no-cache and X-Accel-Buffering: no are written
    before any event, with a first comment so the body has started too."""
    env = Env()
    stream = env.stream(ping=30)
    head, body = written(stream).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 200 ")
    lowered = head.lower()
    assert b"content-type: text/event-stream" in lowered
    assert b"cache-control: no-cache" in lowered
    assert b"x-accel-buffering: no" in lowered
    assert body.startswith(b":")
    assert events(stream) == []
    assert env.hub.listener_count == 1


# -- pings (ES-4..ES-7) -------------------------------------------------------------------


def test_pings_repeat_at_the_interval_without_ids() -> None:
    """ES-4, ES-5, ES-6: ping=30 with no changes → a ping every 30 s, each reporting
    {"interval": 30} and carrying no id."""
    env = Env()
    stream = env.stream(ping=30)
    env.clock.advance(29.9)
    assert events(stream) == []
    env.clock.advance(0.1)
    env.clock.advance(30)
    env.clock.advance(30)
    pings = events(stream)
    assert [e.event for e in pings] == ["ping"] * 3
    assert all(e.id is None and json.loads(e.data) == {"interval": 30} for e in pings)
    assert len(env.clock.getDelayedCalls()) == 1


def test_state_event_pushes_the_next_ping_back() -> None:
    """ES-4: a state event at t=20 moves the next ping to t=50 (one timer: the event only
    notes its time, and the timer, firing at t=30, waits out the rest)."""
    env = Env()
    stream = env.stream(ping=30)
    timer = env.clock.getDelayedCalls()[0]
    env.clock.advance(20)
    env.publish({"A": {"Email": "s1"}})
    assert env.clock.getDelayedCalls() == [timer]  # no timer work per event
    env.clock.advance(29.9)
    assert [e.event for e in events(stream)] == ["state"]
    env.clock.advance(0.1)
    assert [e.event for e in events(stream)] == ["state", "ping"]


def test_steady_events_suppress_pings_with_one_timer() -> None:
    """ES-4: with a state event every 10 s no ping is ever due; the first ping comes a
    whole interval after the last event, and the stream never owns more than one timer."""
    env = Env()
    stream = env.stream(ping=30)
    for i in range(12):
        env.clock.advance(10)
        env.publish({"A": {"Email": f"s{i}"}})
        assert len(env.clock.getDelayedCalls()) == 1
    assert [e.event for e in events(stream)] == ["state"] * 12
    env.clock.advance(29.9)
    assert [e.event for e in events(stream)] == ["state"] * 12
    env.clock.advance(0.1)
    assert [e.event for e in events(stream)] == ["state"] * 12 + ["ping"]
    assert len(env.clock.getDelayedCalls()) == 1


def test_ping_zero_sends_no_pings_and_owns_no_timer() -> None:
    """ES-4: ping=0 → no ping in 10 minutes, and an idle stream owns no timer at all."""
    env = Env()
    stream = env.stream(ping=0)
    assert env.clock.getDelayedCalls() == []
    env.clock.pump([60] * 10)
    assert events(stream) == []


def test_ping_reports_the_clamped_interval() -> None:
    """ES-6, C-ES-1: the interval in use (here the clamped maximum) is what pings report."""
    env = Env()
    stream = env.stream(ping=300)
    env.clock.advance(300)
    assert [json.loads(e.data) for e in events(stream)] == [{"interval": 300}]


# -- state events, filtering (ES-8, ES-12, SC-1) ------------------------------------------


def test_state_event_is_a_filtered_state_change_with_an_id() -> None:
    """ES-8, ES-9, ES-12, SC-1: only readable accounts and requested types are sent, each
    state event carries the change's token as id."""
    env = Env()
    stream = env.stream(accounts=("A",), types=frozenset({"Mailbox"}))
    env.publish({"A": {"Email": "e1"}})  # unwanted type: nothing at all
    env.publish({"B": {"Mailbox": "x"}})  # unreadable account: nothing at all
    token = env.publish({"A": {"Email": "e2", "Mailbox": "m1"}, "B": {"Mailbox": "y"}})
    (event,) = events(stream)
    assert event.event == "state" and event.id == token
    assert json.loads(event.data) == {"@type": "StateChange", "changed": {"A": {"Mailbox": "m1"}}}
    assert env.sent.value == 1


def test_same_filter_streams_share_encoded_bytes() -> None:
    """Fan-out encodes a change once per distinct filter (identical bytes for both)."""
    env = Env()
    one, two = env.stream(), env.stream()
    env.publish({"A": {"Email": "s1"}})
    assert written(one).split(b"\r\n\r\n", 1)[1] == written(two).split(b"\r\n\r\n", 1)[1]
    assert states(one) == [{"A": {"Email": "s1"}}]


def test_closeafter_state_ends_after_the_first_state_event() -> None:
    """ES-3: closeafter=state → one state event, then the response is finished and every
    resource released."""
    env = Env()
    stream = env.stream(ping=30, close_after=True)
    env.clock.advance(30)  # a ping does not end it
    env.publish({"A": {"Email": "s1"}})
    assert [e.event for e in events(stream)] == ["ping", "state"]
    assert stream.request.finished and stream.closed
    assert env.hub.listener_count == 0 and env.clock.getDelayedCalls() == []
    assert env.registry.count == 0


def test_closeafter_no_survives_several_events() -> None:
    """ES-3: closeafter=no keeps the stream open across publishes."""
    env = Env()
    stream = env.stream()
    env.publish({"A": {"Email": "s1"}})
    env.publish({"A": {"Email": "s2"}})
    assert len(states(stream)) == 2 and not stream.request.finished


# -- throttle and coalescing (SC-2) -------------------------------------------------------


def test_changes_in_one_window_become_one_event_with_newest_states() -> None:
    """SC-2: the first change goes out at once; N publishes inside the window → one event
    with the newest state per account/type at the window's end, and the next window's
    event on time."""
    env = Env(throttle=1.0)
    stream = env.stream(accounts=("A", "B"))
    env.publish({"A": {"Email": "s0"}})
    assert states(stream) == [{"A": {"Email": "s0"}}]
    env.clock.advance(0.1)
    last = ""
    for i in range(1, 21):
        last = env.publish({"A": {"Email": f"s{i}"}, "B": {"Mailbox": f"m{i}"}})
    env.publish({"C": {"Email": "hidden"}})
    env.clock.advance(0.89)
    assert len(states(stream)) == 1
    env.clock.advance(0.01)
    assert states(stream)[1] == {"A": {"Email": "s20"}, "B": {"Mailbox": "m20"}}
    assert events(stream)[1].id == last
    env.clock.advance(0.2)  # t = 1.2: inside the next window
    env.publish({"A": {"Email": "s21"}})
    env.clock.advance(0.79)
    assert len(states(stream)) == 2
    env.clock.advance(0.01)  # t = 2.0: that window ends
    assert states(stream)[2] == {"A": {"Email": "s21"}}
    assert env.clock.getDelayedCalls() == []


def test_slow_reader_pauses_and_pending_stays_bounded() -> None:
    """While the transport is paused nothing is written and changes merge per account/type
    (bounded); on resume the newest states go out in one event."""
    env = Env()
    stream = env.stream(ping=30)
    stream.pauseProducing()
    for i in range(1000):
        env.publish({"A": {"Email": f"s{i}", "Mailbox": f"m{i}"}})
    env.clock.advance(30)  # pings are skipped while the reader is backed up
    assert events(stream) == []
    assert stream._throttle is not None  # made paused by the first change
    assert stream._throttle.pending == {"A": {"Email": "s999", "Mailbox": "m999"}}
    stream.resumeProducing()
    assert states(stream) == [{"A": {"Email": "s999", "Mailbox": "m999"}}]


# -- lifecycle ----------------------------------------------------------------------------


def test_disconnect_releases_everything_at_once() -> None:
    """A client that goes away is removed from the hub, and its ping and throttle timers
    are cancelled, immediately."""
    env = Env(throttle=1.0)
    stream = env.stream(ping=30)
    env.publish({"A": {"Email": "s1"}})
    env.publish({"A": {"Email": "s2"}})  # pending: the throttle holds a timer
    assert len(env.clock.getDelayedCalls()) == 2
    disconnect(stream)
    assert env.hub.listener_count == 0 and env.registry.count == 0
    assert env.clock.getDelayedCalls() == []
    env.publish({"A": {"Email": "s3"}})
    assert len(states(stream)) == 1


def test_thousand_connect_disconnect_cycles_leave_nothing_behind() -> None:
    """1,000 connect/disconnect cycles (with traffic in between) leave zero hub listeners,
    zero registered streams and no pending timers."""
    env = Env(throttle=0.5)
    for i in range(1000):
        stream = env.stream(ping=30, close_after=(i % 3 == 0), user=f"u{i % 7}")
        if i % 2:
            env.publish({"A": {"Email": f"s{i}"}})
            env.publish({"A": {"Email": f"t{i}"}})
        env.clock.advance(0.1)
        if not stream.closed:
            disconnect(stream)
    assert env.hub.listener_count == 0
    assert env.registry.count == 0 and env.registry.streams() == []
    assert env.clock.getDelayedCalls() == []


def test_close_all_finishes_every_stream() -> None:
    """Shutdown ends every open stream cleanly (finished responses), leaving zero
    listeners and zero timers, and later connections are refused."""
    env = Env(throttle=1.0)
    streams = [env.stream(ping=30, user=f"u{i}") for i in range(5)]
    env.publish({"A": {"Email": "s1"}})
    env.publish({"A": {"Email": "s2"}})
    env.registry.close_all()
    assert all(s.request.finished for s in streams)
    assert env.hub.listener_count == 0 and env.registry.count == 0
    assert env.clock.getDelayedCalls() == []
    assert env.registry.closing


def test_registry_counts_per_user() -> None:
    """The per-user count that the connection limit uses follows opens and closes."""
    env = Env()
    a1, _a2, _b = env.stream(user="a"), env.stream(user="a"), env.stream(user="b")
    assert (env.registry.count_for("a"), env.registry.count_for("b")) == (2, 1)
    disconnect(a1)
    assert env.registry.count_for("a") == 1 and env.registry.count == 2


# -- catch-up (ES-10, C-ES-3) -------------------------------------------------------------


def test_catch_up_comes_first_and_live_changes_meanwhile_follow() -> None:
    """ES-10: changes that arrive while the catch-up query runs are held and sent after
    the catch-up event, so the newest token ends up last."""
    env = Env()
    stream = env.stream()
    stream.hold()
    live = env.publish({"A": {"Email": "s2"}})
    assert events(stream) == []
    mark = env.token(0)
    stream.catch_up_done({"A": {"Email": "s1", "Mailbox": "m1"}, "B": {"Email": "x"}}, mark)
    assert states(stream) == [{"A": {"Email": "s1", "Mailbox": "m1"}}, {"A": {"Email": "s2"}}]
    assert [e.id for e in events(stream)] == [mark, live]


def test_catch_up_with_closeafter_state_counts_as_the_state_event() -> None:
    """C-ES-3: with closeafter=state the catch-up event ends the response."""
    env = Env()
    stream = env.stream(close_after=True)
    stream.hold()
    env.publish({"A": {"Email": "s2"}})
    stream.catch_up_done({"A": {"Email": "s1"}}, env.token(0))
    assert states(stream) == [{"A": {"Email": "s1"}}]
    assert stream.request.finished and env.hub.listener_count == 0


def test_empty_catch_up_sends_nothing() -> None:
    """C-ES-3: a known token with nothing changed yields no event (never an empty one)."""
    env = Env()
    stream = env.stream(types=frozenset({"Email"}))
    stream.hold()
    stream.catch_up_done({"A": {"Mailbox": "m1"}}, env.token(0))
    assert events(stream) == []
    env.publish({"A": {"Email": "s1"}})
    assert states(stream) == [{"A": {"Email": "s1"}}]


# -- revocation ---------------------------------------------------------------------------


def auth_store() -> MemoryStore:
    """alice (u1, password hash h1) reads A (hers) and B (granted), with token t1."""
    store = open_memory_store()
    store.add_user("alice", "h1", "A")
    store.grant("alice", "B")
    store.create_token("alice", bytes(32))
    return store


def auth_env() -> tuple[Env, MemoryStore, EventStream, EventStream]:
    store = auth_store()
    env = Env(store=store)
    password = env.stream(accounts=("A", "B"), credential="password:u1")
    env.registry.add(password, b"fp")  # a fingerprint is remembered once per user
    token = env.stream(accounts=("A", "B"), credential="token:t1")
    return env, store, password, token


def revalidate(env: Env) -> None:
    env.registry.invalidate()  # everything is synchronous with these fakes


def test_removed_user_loses_every_stream() -> None:
    """A user removed mid-stream has all its streams ended at the next invalidation."""
    env, store, password, token = auth_env()
    store.remove_user("alice")
    revalidate(env)
    assert password.request.finished and token.request.finished
    assert env.hub.listener_count == 0


def test_revoked_token_ends_only_its_streams() -> None:
    """Revoking a token ends the streams it opened; password streams continue."""
    env, store, password, token = auth_env()
    env.registry._users["u1"].password_fp = None  # let the first pass record the hash
    revalidate(env)
    store.revoke_token("t1")
    revalidate(env)
    assert token.request.finished and not password.request.finished


def test_changed_password_ends_password_streams() -> None:
    """A changed password ends the streams it authenticated; token streams continue."""
    env, store, password, token = auth_env()
    env.registry._users["u1"].password_fp = None
    revalidate(env)
    store.set_password("alice", "h2")
    revalidate(env)
    assert password.request.finished and not token.request.finished


def test_revoked_grant_stops_that_accounts_changes() -> None:
    """A revoked grant takes effect on open streams: that account's changes (even those
    pending in the throttle) are no longer sent; the other account's still are."""
    store = auth_store()
    env = Env(store=store, throttle=1.0)
    stream = env.stream(accounts=("A", "B"), credential="token:t1")
    env.publish({"A": {"Email": "s1"}})
    env.publish({"B": {"Email": "pending"}})
    store.revoke_grant("alice", "B")
    revalidate(env)
    env.clock.advance(1)
    env.publish({"A": {"Email": "s2"}, "B": {"Email": "b2"}})
    env.clock.advance(1)
    assert states(stream) == [{"A": {"Email": "s1"}}, {"A": {"Email": "s2"}}]
    assert env.hub.listener_count == 1


def test_an_open_stream_keeps_no_query_or_sent_headers() -> None:
    """ES-1 headers go out at once; then the parsed query and the response headers (on
    the wire already) are dropped, since a stream lives for hours."""
    env = Env()
    channel = DummyChannel()
    request = Request(channel)
    request.method, request.clientproto = b"GET", b"HTTP/1.1"
    request.args = {b"types": [b"*"], b"closeafter": [b"no"], b"ping": [b"30"]}
    stream = EventStream(env.ctx, request, user_id="u1", credential_id="password:u1",
                         account_ids=frozenset({"A"}), types=None, interval=30,
                         close_after=False)
    env.registry.add(stream)
    stream.open()
    head = channel.transport.written.getvalue()
    assert b"text/event-stream" in head and b"no-cache" in head
    assert request.args == {} and list(request.responseHeaders.getAllRawHeaders()) == []
    env.publish({"A": {"Email": "s1"}})  # chunked, through send_now's fallback path
    assert b'"changed":{"A":{"Email":"s1"}}' in channel.transport.written.getvalue()
