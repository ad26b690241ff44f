"""Gateway mode's pure parts: the upstream session, Cyrus notify packets, debounced state reads."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from jmappushd.gateway.cyrus_notify import CyrusNotifyProtocol, account_of_event
from jmappushd.gateway.session import merge_session, parse_session
from jmappushd.gateway.states import StateReader, parse_states
from jmappushd.gateway.upstream import (
    UpstreamRejected,
    UpstreamResponse,
    UpstreamUnavailable,
)

MAIL = "urn:ietf:params:jmap:mail"
CORE = "urn:ietf:params:jmap:core"

# Shaped like Cyrus 3.6.1's session for a reader granted lr on alice (relative URLs).
CYRUS_SESSION: dict[str, Any] = {
    "username": "reader",
    "apiUrl": "/jmap/",
    "downloadUrl": "/jmap/download/{accountId}/{blobId}/{name}?accept={type}",
    "uploadUrl": "/jmap/upload/{accountId}/",
    "eventSourceUrl": "/jmap/eventsource/?types={types}&closeafter={closeafter}&ping={ping}",
    "state": "0",
    "capabilities": {CORE: {"maxSizeRequest": 10485760, "maxConcurrentRequests": 5,
                            "maxCallsInRequest": 50, "maxObjectsInGet": 4096},
                     MAIL: {}},
    "accounts": {
        "reader": {"name": "reader", "isPersonal": True, "isReadOnly": False,
                   "accountCapabilities": {MAIL: {}, "urn:ietf:params:jmap:submission": {}}},
        "alice": {"name": "alice", "isPersonal": False, "isReadOnly": True,
                  "accountCapabilities": {MAIL: {}}},
    },
    "primaryAccounts": {MAIL: "reader"},
}
SESSION_URL = "http://127.0.0.1:8008/jmap/"


def upstream_session(**changes: Any) -> Any:
    return parse_session(json.dumps({**CYRUS_SESSION, **changes}).encode(), SESSION_URL,
                         "http://127.0.0.1:8008")


def test_relative_urls_become_absolute() -> None:
    session = upstream_session()
    assert session.api_url == "http://127.0.0.1:8008/jmap/"
    assert session.download_url.startswith("http://127.0.0.1:8008/jmap/download/{accountId}/")
    assert session.account_types("alice") == ("Mailbox", "Email", "Thread")
    assert session.account_types("reader") == ("Mailbox", "Email", "Thread", "Identity",
                                               "EmailSubmission")
    assert session.account_types("bob") == ()


@pytest.mark.parametrize(("body", "reason"), [
    (b"<html>", "not JSON"),
    (b"[]", "not an object"),
    (json.dumps({**CYRUS_SESSION, "apiUrl": 7}).encode(), "without apiUrl"),
    (json.dumps({**CYRUS_SESSION, "apiUrl": "ftp://x/"}).encode(), "apiUrl is not http(s)"),
    (json.dumps({**CYRUS_SESSION, "capabilities": {}}).encode(), "core capability"),
    (json.dumps({**CYRUS_SESSION, "accounts": {"a": 1}}).encode(), "valid accounts"),
    (json.dumps({**CYRUS_SESSION, "primaryAccounts": {MAIL: "zz"}}).encode(),
     "bad primaryAccounts"),
])
def test_unusable_sessions_are_an_outage_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(UpstreamUnavailable, match=re.escape(reason)):
        parse_session(body, SESSION_URL, "http://127.0.0.1:8008")


def test_merged_session_points_push_at_the_daemon() -> None:
    ws = {"url": "wss://push.example/jmap/ws", "supportsPush": True}
    merged = merge_session(
        upstream_session(), {"urn:ietf:params:jmap:websocket": ws, CORE: {"ignored": 1}},
        {"maxSizeRequest": 10_000_000, "maxConcurrentRequests": 4, "maxCallsInRequest": 16},
        "https://push.example/jmap/api/", "https://push.example/jmap/eventsource/?x")
    assert merged["apiUrl"] == "https://push.example/jmap/api/"
    assert merged["eventSourceUrl"] == "https://push.example/jmap/eventsource/?x"
    assert merged["downloadUrl"].startswith("http://127.0.0.1:8008/jmap/download/")
    assert merged["capabilities"]["urn:ietf:params:jmap:websocket"] == ws
    core = merged["capabilities"][CORE]
    assert (core["maxSizeRequest"], core["maxConcurrentRequests"],
            core["maxCallsInRequest"], core["maxObjectsInGet"]) == (10_000_000, 4, 16, 4096)
    assert merged["primaryAccounts"] == {MAIL: "reader"} and merged["username"] == "reader"
    again = merge_session(upstream_session(state="1"), {}, {}, "a", "b")
    assert again["state"] != merge_session(upstream_session(), {}, {}, "a", "b")["state"]


def packet(user: str, event: dict[str, Any]) -> bytes:
    return b"\0".join([b"external", b"EVENT", b"", user.encode(), b"", b"0",
                       json.dumps(event).encode(), b""])


def test_notify_packets_name_the_mailbox_owner() -> None:
    assert account_of_event(packet("bob", {"event": "MessageNew"})) == "bob"
    modseq = {"event": "MailboxModseq", "user": "",
              "uri": "imap://localhost/user/bob;UIDVALIDITY=1796183477"}
    assert account_of_event(packet("", modseq)) == "bob"
    sub = {"event": "MailboxCreate", "uri": "imap://localhost/user/bob/Sent%20Items"}
    assert account_of_event(packet("", sub)) == "bob"
    assert account_of_event(packet("", {"uri": "imap://localhost/shared/news"})) is None
    assert account_of_event(b"garbage") is None
    assert account_of_event(packet("", {"uri": 5})) is None
    assert account_of_event(b"\0".join([b"external", b"EVENT", b"", b"", b"", b"0",
                                        b"{not json", b""])) is None


def test_notify_protocol_drops_bad_packets_and_logs_once() -> None:
    seen: list[str] = []
    protocol = CyrusNotifyProtocol(seen.append)
    protocol.datagramReceived(b"junk", None)
    protocol.datagramReceived(b"junk2", None)
    protocol.datagramReceived(packet("alice", {}), None)
    assert seen == ["alice"]
    assert (protocol.received, protocol.dropped) == (3, 2)


def test_parse_states_keeps_only_answered_types() -> None:
    body = json.dumps({"methodResponses": [
        ["Mailbox/get", {"state": "5", "list": []}, "Mailbox"],
        ["error", {"type": "accountNotFound"}, "Email"],
        ["Thread/get", {"state": 7}, "Thread"],
    ]}).encode()
    assert parse_states(body, ("Mailbox", "Email", "Thread")) == {"Mailbox": "5"}
    with pytest.raises(ValueError):
        parse_states(b"{}", ("Mailbox",))


class FakeUpstream:
    """Answers state reads from a dict the test moves; counts requests."""

    def __init__(self) -> None:
        self.states = {"Mailbox": "1", "Email": "1", "Thread": "1"}
        self.requests = 0
        self.down = False
        self.pending: list[Deferred[None]] = []
        self.hold = False

    def post(self, url: str, body: bytes) -> Deferred[UpstreamResponse]:
        self.requests += 1
        if self.down:
            return fail(UpstreamUnavailable("down"))
        calls = json.loads(body)["methodCalls"]
        answer = json.dumps({"methodResponses": [
            [c[0], {"state": self.states[c[2]], "list": []}, c[2]] for c in calls]}).encode()
        response = UpstreamResponse(200, b"application/json", answer)  # states as of now
        if self.hold:
            gate: Deferred[None] = Deferred()
            self.pending.append(gate)
            return gate.addCallback(lambda _: response)
        return succeed(response)


def reader(clock: Clock, upstream: FakeUpstream, published: list[Any],
           stored: dict[str, str] | None = None) -> StateReader:
    session = upstream_session()

    async def publish(changed: Any) -> None:
        published.append(changed)

    return StateReader(clock, 0.2, lambda refresh: succeed(session), upstream.post, publish,
                       lambda account: succeed(dict(stored or {})))


def test_events_within_the_debounce_cost_one_read() -> None:
    clock, upstream = Clock(), FakeUpstream()
    published: list[Any] = []
    states = reader(clock, upstream, published)
    for _ in range(50):
        states.changed("alice")
    assert upstream.requests == 0
    clock.advance(0.2)
    assert upstream.requests == 1
    assert published == [{"alice": {"Mailbox": "1", "Email": "1", "Thread": "1"}}]


def test_only_moved_types_are_published() -> None:
    clock, upstream = Clock(), FakeUpstream()
    published: list[Any] = []
    states = reader(clock, upstream, published, stored={"Mailbox": "1", "Email": "1",
                                                        "Thread": "1"})
    states.changed("alice")
    clock.advance(0.2)
    assert published == []  # nothing moved since the recorded states
    upstream.states["Email"] = "2"
    states.changed("alice")
    clock.advance(0.2)
    assert published == [{"alice": {"Email": "2"}}]


def test_an_event_during_a_read_gets_a_read_after_it() -> None:
    """The read in flight may predate the event: exactly one more read follows."""
    clock, upstream = Clock(), FakeUpstream()
    published: list[Any] = []
    upstream.hold = True
    states = reader(clock, upstream, published)
    states.changed("alice")
    clock.advance(0.2)
    assert upstream.requests == 1
    upstream.states["Email"] = "2"
    states.changed("alice")
    states.changed("alice")
    upstream.pending.pop().callback(None)
    clock.advance(0.2)
    assert upstream.requests == 2
    upstream.pending.pop().callback(None)
    assert published[-1] == {"alice": {"Email": "2"}}
    clock.advance(10)
    assert upstream.requests == 2


def test_an_outage_is_retried_with_backoff_and_nothing_is_lost() -> None:
    clock, upstream = Clock(), FakeUpstream()
    published: list[Any] = []
    upstream.down = True
    states = reader(clock, upstream, published)
    states.changed("alice")
    clock.advance(0.2)
    clock.advance(1.0)
    clock.advance(2.0)
    assert upstream.requests == 3 and published == []
    upstream.down = False
    clock.advance(4.0)
    assert upstream.requests == 4
    assert published == [{"alice": {"Mailbox": "1", "Email": "1", "Thread": "1"}}]
    clock.advance(100)
    assert upstream.requests == 4


def test_rejected_reader_credentials_are_logged_once_and_not_retried() -> None:
    clock = Clock()
    published: list[Any] = []
    calls = []

    def post(url: str, body: bytes) -> Deferred[UpstreamResponse]:
        calls.append(url)
        return fail(UpstreamRejected(401, []))

    async def publish(changed: Any) -> None:
        published.append(changed)

    session = upstream_session()
    states = StateReader(clock, 0.2, lambda r: succeed(session), post, publish,
                         lambda a: succeed({}))
    states.changed("alice")
    clock.advance(0.2)
    clock.advance(100)
    assert len(calls) == 1 and published == []


def test_unknown_accounts_refresh_the_session_once() -> None:
    clock, upstream = Clock(), FakeUpstream()
    published: list[Any] = []
    refreshes: list[bool] = []
    session = upstream_session()

    def get(refresh: bool) -> Deferred[Any]:
        refreshes.append(refresh)
        return succeed(session)

    async def publish(changed: Any) -> None:
        published.append(changed)

    states = StateReader(clock, 0.2, get, upstream.post, publish, lambda a: succeed({}))
    states.changed("carol")
    clock.advance(0.2)
    assert refreshes == [False, True] and upstream.requests == 0 and published == []
