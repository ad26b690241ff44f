"""The EventSource endpoint against an in-process daemon on 127.0.0.1, read by a real
streaming HTTP client (treq, unbuffered) whose bytes go through the SSE parser.

Waits are for events (with a bounded timeout), never sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure

from jmappushd.transports.eventsource.service import EventSourceService
from tests.sse_parser import Event, EventParser
from tests.support import (
    LiveDaemon,
    RequestHeaders,
    basic,
    bearer,
    live_reactor,
    make_config,
    start_daemon,
    stop_daemon,
)

if TYPE_CHECKING:
    from treq._types import _ITreqReactor

TIMEOUT = 10.0
ES_SECTION = "\n".join([
    "event-source-throttle = 0",
    "ping-min = 2",
    "cors-origins = https://app.example.com, *",
    "max-connections-per-user = 3",
])


class SSEClient(protocol.Protocol):
    """Receives a response body and parses it into events as bytes arrive."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.parser = EventParser()
        self.read = 0
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._waiting: defer.Deferred[None] | None = None
        response.deliverBody(self)

    def dataReceived(self, data: bytes) -> None:
        if self.parser.feed(data):
            self._wake()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._wake()
        if not self.ended.called:
            self.ended.callback(None)

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    async def next(self, timeout: float = TIMEOUT) -> Event:
        """The next unread event; fails after ``timeout`` seconds or at end of body."""
        from twisted.internet import reactor

        while self.read >= len(self.parser.events):
            if self.ended.called:
                raise AssertionError("the stream ended before the next event")
            self._waiting = defer.Deferred()
            await self._waiting.addTimeout(timeout, reactor)
        event = self.parser.events[self.read]
        self.read += 1
        return event

    async def next_state(self, timeout: float = TIMEOUT) -> tuple[dict[str, Any], str | None]:
        """Skip pings; return the next state event's ``changed`` and id."""
        while True:
            event = await self.next(timeout)
            if event.event == "state":
                body = json.loads(event.data)
                assert body["@type"] == "StateChange" and set(body) == {"@type", "changed"}
                return body["changed"], event.id

    async def wait_end(self, timeout: float = TIMEOUT) -> None:
        from twisted.internet import reactor

        d: defer.Deferred[None] = defer.Deferred()

        def ended(_: object) -> None:
            if not d.called:
                d.callback(None)

        self.ended.addBoth(ended)
        await d.addTimeout(timeout, reactor)

    def close(self) -> None:
        if self.transport is not None:
            # A response body's transport is its connection's producer.
            cast(IPushProducer, self.transport).stopProducing()


def es_url(base: str, types: str = "*", closeafter: str = "no", ping: str = "0",
           **extra: str) -> str:
    url = f"{base}/jmap/eventsource/?types={types}&closeafter={closeafter}&ping={ping}"
    for key, value in extra.items():
        url += f"&{key}={quote(value, safe='')}"
    return url


async def connect(url: str, headers: RequestHeaders) -> tuple[Any, SSEClient | None]:
    """GET the stream; the client is None when the answer is not 200."""
    # The global reactor provides all of treq's (private) reactor interface.
    reactor = cast("_ITreqReactor", live_reactor())
    response = await treq.get(url, headers=dict(headers), unbuffered=True, persistent=False,
                              timeout=TIMEOUT, reactor=reactor)
    if response.code != 200:
        return response, None
    return response, SSEClient(response)


async def open_stream(url: str, headers: RequestHeaders) -> SSEClient:
    response, client = await connect(url, headers)
    assert response.code == 200, (response.code, await response.text())
    assert client is not None
    return client


def header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return None if values is None else values[-1]


async def wait_for(check: Any, what: str, timeout: float = TIMEOUT) -> None:
    """Let the reactor run (one turn at a time) until ``check()`` holds."""
    from twisted.internet import reactor, task

    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def es(tmp_path: Path) -> Iterator[LiveDaemon]:
    """A daemon with no throttle, ping-min 2, CORS for app.example.com and *, and at most
    three streams per user."""
    config = make_config(tmp_path, sections={"event-source": ES_SECTION})
    daemon = pytest_twisted.blockon(defer.ensureDeferred(start_daemon(config)))
    yield daemon
    pytest_twisted.blockon(defer.ensureDeferred(stop_daemon(daemon)))


def registry(daemon: LiveDaemon) -> Any:
    return daemon.service.transport(EventSourceService).registry


@pytest_twisted.ensureDeferred
async def test_stream_headers_and_state_event(es: LiveDaemon) -> None:
    """ES-1, ES-8, ES-9, C-ES-5, SC-1: 200 with the stream headers before any event; a
    publish arrives as a StateChange state event with an id."""
    account = await es.add_user("alice")
    response, client = await connect(es_url(es.base), basic("alice", "secret"))
    assert response.code == 200 and client is not None
    assert header(response, "Content-Type") == "text/event-stream"
    assert header(response, "Cache-Control") == "no-cache"
    assert header(response, "X-Accel-Buffering") == "no"
    await es.publish({account: {"Email": "s42"}})
    changed, event_id = await client.next_state()
    assert changed == {account: {"Email": "s42"}}
    assert event_id
    client.close()
    await wait_for(lambda: es.app.hub.listener_count == 0, "the hub listener to go")


@pytest_twisted.ensureDeferred
async def test_types_filtering_and_percent_encoding(es: LiveDaemon) -> None:
    """ES-2, ES-12: types=Mailbox never gets an Email-only change and only sees Mailbox;
    the RFC 6570 encodings %2A and %2C are decoded."""
    account = await es.add_user("alice")
    auth = basic("alice", "secret")
    mailbox = await open_stream(es_url(es.base, types="Mailbox"), auth)
    listed = await open_stream(es_url(es.base, types="Email%2CThread"), auth)
    star = await open_stream(es_url(es.base, types="%2A"), auth)
    await es.publish({account: {"Email": "e1"}})
    await es.publish({account: {"Email": "e2", "Mailbox": "m1", "Thread": "t1"}})
    assert (await mailbox.next_state())[0] == {account: {"Mailbox": "m1"}}
    assert (await listed.next_state())[0] == {account: {"Email": "e1"}}
    assert (await listed.next_state())[0] == {account: {"Email": "e2", "Thread": "t1"}}
    assert (await star.next_state())[0] == {account: {"Email": "e1"}}
    assert (await star.next_state())[0] == {account: {"Email": "e2", "Mailbox": "m1",
                                                      "Thread": "t1"}}
    for client in (mailbox, listed, star):
        client.close()


@pytest_twisted.ensureDeferred
async def test_account_isolation_even_with_all_types(es: LiveDaemon) -> None:
    """ES-12: user A with types=* never receives account B's changes, alone or mixed in."""
    a = await es.add_user("alice")
    b = await es.add_user("bob")
    alice = await open_stream(es_url(es.base), basic("alice", "secret"))
    bob = await open_stream(es_url(es.base), basic("bob", "secret"))
    await es.publish({b: {"Email": "secret-state"}})
    await es.publish({a: {"Email": "a1"}, b: {"Email": "b2"}})
    assert (await alice.next_state())[0] == {a: {"Email": "a1"}}
    assert (await bob.next_state())[0] == {b: {"Email": "secret-state"}}
    assert (await bob.next_state())[0] == {b: {"Email": "b2"}}
    alice.close()
    bob.close()


@pytest_twisted.ensureDeferred
async def test_several_connections_of_one_user_each_get_the_change(es: LiveDaemon) -> None:
    """ES-11: three parallel connections of one user each receive the same change."""
    account = await es.add_user("alice")
    clients = [await open_stream(es_url(es.base), basic("alice", "secret")) for _ in range(3)]
    await es.publish({account: {"Email": "s1"}})
    for client in clients:
        assert (await client.next_state())[0] == {account: {"Email": "s1"}}
        client.close()


@pytest_twisted.ensureDeferred
async def test_closeafter_state_ends_the_response(es: LiveDaemon) -> None:
    """ES-3: closeafter=state → exactly one state event, then end of body."""
    account = await es.add_user("alice")
    client = await open_stream(es_url(es.base, closeafter="state"), basic("alice", "secret"))
    await es.publish({account: {"Email": "s1"}})
    assert (await client.next_state())[0] == {account: {"Email": "s1"}}
    await client.wait_end()
    assert [e.event for e in client.parser.events] == ["state"]
    await wait_for(lambda: registry(es).count == 0, "the stream to be released")


@pytest_twisted.ensureDeferred
async def test_ping_events_are_clamped_and_id_free(es: LiveDaemon) -> None:
    """ES-4..ES-7, C-ES-1: ping=1 is raised to ping-min (2) and reported as such in pings
    without ids; a huge ping is lowered to ping-max (300); ping=0 arms no ping timer."""
    await es.add_user("alice")
    auth = basic("alice", "secret")
    client = await open_stream(es_url(es.base, ping="1"), auth)
    event = await client.next(timeout=5)
    assert event.event == "ping" and event.id is None
    assert json.loads(event.data) == {"interval": 2}
    big = await open_stream(es_url(es.base, ping="100000"), auth)
    none = await open_stream(es_url(es.base, ping="0"), auth)
    intervals = sorted(s.interval for s in registry(es).streams())
    assert intervals == [0, 2, 300]
    for c in (client, big, none):
        c.close()


@pytest_twisted.ensureDeferred
async def test_invalid_parameters_answer_400_naming_them(es: LiveDaemon) -> None:
    """C-ES-2: missing or malformed types/closeafter/ping → 400 problem details naming it."""
    await es.add_user("alice")
    auth = basic("alice", "secret")
    cases = {
        "types": f"{es.base}/jmap/eventsource/?closeafter=no&ping=0",
        "closeafter": es_url(es.base, closeafter="maybe"),
        "ping": es_url(es.base, ping="-5"),
    }
    for name, url in cases.items():
        response = await treq.get(url, headers=auth)
        assert response.code == 400
        assert header(response, "Content-Type") == "application/problem+json"
        body = await response.json()
        assert body["type"] == "about:blank" and body["parameter"] == name
        assert name in body["detail"]
    assert registry(es).count == 0


@pytest_twisted.ensureDeferred
async def test_unauthenticated_requests_get_401(es: LiveDaemon) -> None:
    """SES-1, ES-1: no or wrong credentials → 401 with a WWW-Authenticate challenge."""
    await es.add_user("alice")
    for headers in ({}, basic("alice", "wrong"), bearer("jmp_nope")):
        response = await treq.get(es_url(es.base), headers=headers)
        assert response.code == 401
        assert response.headers.getRawHeaders("WWW-Authenticate")
        await response.content()
    assert es.app.hub.listener_count == 0


@pytest_twisted.ensureDeferred
async def test_access_token_query_parameter(es: LiveDaemon) -> None:
    """RFC 6750 §2.3: a bearer token in access_token works for browsers' EventSource."""
    account = await es.add_user("alice")
    token = await es.add_token("alice")
    client = await open_stream(es_url(es.base, access_token=token), {})
    await es.publish({account: {"Email": "s1"}})
    assert (await client.next_state())[0] == {account: {"Email": "s1"}}
    client.close()


@pytest_twisted.ensureDeferred
async def test_access_token_can_be_switched_off(tmp_path: Path) -> None:
    """allow-access-token-query = false: the query token is ignored (401)."""
    config = make_config(tmp_path, sections={"auth": "allow-access-token-query = false"})
    daemon = await start_daemon(config)
    try:
        await daemon.add_user("alice")
        token = await daemon.add_token("alice")
        response = await treq.get(es_url(daemon.base, access_token=token))
        assert response.code == 401
        await response.content()
        client = await open_stream(es_url(daemon.base), bearer(token))
        client.close()
    finally:
        await stop_daemon(daemon)


@pytest_twisted.ensureDeferred
async def test_cors_preflight_and_stream_headers(es: LiveDaemon) -> None:
    """The preflight for Authorization needs no credentials; a listed origin is echoed,
    another origin gets * (from the configured wildcard); credentials in the Fetch sense
    (cookies, browser-held HTTP auth) are never allowed. The origins come from the
    deprecated [event-source] cors-origins, which still works."""
    await es.add_user("alice")
    preflight: RequestHeaders = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"}
    response = await treq.request("OPTIONS", es_url(es.base), headers=preflight)
    assert response.code == 204
    assert header(response, "Access-Control-Allow-Origin") == "https://app.example.com"
    assert header(response, "Access-Control-Allow-Credentials") is None
    assert "Authorization" in (header(response, "Access-Control-Allow-Headers") or "")
    assert "GET" in (header(response, "Access-Control-Allow-Methods") or "")
    await response.content()
    response, client = await connect(es_url(es.base), {
        **basic("alice", "secret"), "Origin": "https://app.example.com"})
    assert client is not None
    assert header(response, "Access-Control-Allow-Origin") == "https://app.example.com"
    assert header(response, "Vary") == "Origin"
    client.close()
    response, client = await connect(es_url(es.base), {
        **basic("alice", "secret"), "Origin": "https://elsewhere.example"})
    assert client is not None
    assert header(response, "Access-Control-Allow-Origin") == "*"
    assert header(response, "Access-Control-Allow-Credentials") is None
    client.close()


@pytest_twisted.ensureDeferred
async def test_no_cors_headers_by_default(live: LiveDaemon) -> None:
    """Empty cors-origins (the default): no CORS headers on the stream."""
    await live.add_user("alice")
    response, client = await connect(es_url(live.base), {
        **basic("alice", "secret"), "Origin": "https://app.example.com"})
    assert client is not None
    assert header(response, "Access-Control-Allow-Origin") is None
    client.close()


@pytest_twisted.ensureDeferred
async def test_connection_limit_per_user_answers_429(es: LiveDaemon) -> None:
    """Over max-connections-per-user (3) → 429 problem details; other users unaffected;
    a closed stream frees its slot."""
    await es.add_user("alice")
    await es.add_user("bob")
    auth = basic("alice", "secret")
    clients = [await open_stream(es_url(es.base), auth) for _ in range(3)]
    response, refused = await connect(es_url(es.base), auth)
    assert response.code == 429 and refused is None
    assert (await response.json())["status"] == 429
    other = await open_stream(es_url(es.base), basic("bob", "secret"))
    alice = await es.app.store.get_user("alice")
    assert alice is not None and registry(es).count_for(alice.id) == 3
    clients[0].close()
    await wait_for(lambda: registry(es).count_for(alice.id) == 2, "a slot to be freed")
    clients[0] = await open_stream(es_url(es.base), auth)
    for c in [*clients, other]:
        c.close()



async def publish(daemon: LiveDaemon, changed: Mapping[str, Mapping[str, str]]) -> str:
    """POST /publish on the admin listener over a fresh connection (safe across restarts)."""
    response = await treq.post(
        daemon.admin + "/publish", json={"@type": "StateChange", "changed": changed},
        headers=bearer(daemon.app.admin_token), persistent=False)
    assert response.code == 202, (response.code, await response.text())
    return str((await response.json()).get("token", ""))


@pytest_twisted.ensureDeferred
async def test_resumption_with_last_event_id_across_a_restart(tmp_path: Path) -> None:
    """ES-10, C-ES-3, C-ES-4: reconnecting with Last-Event-ID first yields one state event
    with exactly what was missed, then live changes; the ids stay valid after a daemon
    restart; an unknown id yields the full current state of the requested types."""
    config = make_config(tmp_path, sections={"event-source": "event-source-throttle = 0"})
    daemon = await start_daemon(config)
    try:
        account = await daemon.add_user("alice")
        auth = basic("alice", "secret")
        client = await open_stream(es_url(daemon.base), auth)
        await publish(daemon, {account: {"Email": "s1", "Mailbox": "m1"}})
        _, first_id = await client.next_state()
        assert first_id
        client.close()
        await publish(daemon, {account: {"Email": "s2"}})
        await publish(daemon, {account: {"Thread": "t1"}})
        client = await open_stream(es_url(daemon.base), {**auth, "Last-Event-ID": first_id})
        assert (await client.next_state())[0] == {account: {"Email": "s2", "Thread": "t1"}}
        await publish(daemon, {account: {"Email": "s3"}})
        changed, live_id = await client.next_state()
        assert changed == {account: {"Email": "s3"}} and live_id
        client.close()
    finally:
        await stop_daemon(daemon)
    daemon = await start_daemon(config)
    try:
        await publish(daemon, {account: {"Mailbox": "m2"}})
        client = await open_stream(es_url(daemon.base), {**auth, "Last-Event-ID": live_id})
        changed, resumed_id = await client.next_state()
        assert changed == {account: {"Mailbox": "m2"}}
        assert resumed_id and resumed_id != live_id
        client.close()
        full = await open_stream(es_url(daemon.base, types="Email,Mailbox"),
                                 {**auth, "Last-Event-ID": "not-a-token"})
        assert (await full.next_state())[0] == {account: {"Email": "s3", "Mailbox": "m2"}}
        full.close()
        once = await open_stream(es_url(daemon.base, closeafter="state"),
                                 {**auth, "Last-Event-ID": first_id})
        assert (await once.next_state())[0] == {
            account: {"Email": "s3", "Mailbox": "m2", "Thread": "t1"}}
        await once.wait_end()
        current = await open_stream(es_url(daemon.base), {**auth, "Last-Event-ID": resumed_id})
        await publish(daemon, {account: {"Email": "s4"}})
        assert (await current.next_state())[0] == {account: {"Email": "s4"}}  # no catch-up
        current.close()
    finally:
        await stop_daemon(daemon)


@pytest_twisted.ensureDeferred
async def test_shutdown_ends_every_stream(tmp_path: Path) -> None:
    """Stopping the daemon finishes every open stream (the client sees end of body) and
    leaves zero listeners."""
    daemon = await start_daemon(make_config(tmp_path))
    stopped = False
    try:
        await daemon.add_user("alice")
        clients = [await open_stream(es_url(daemon.base, ping="30"), basic("alice", "secret"))
                   for _ in range(3)]
        await stop_daemon(daemon)
        stopped = True
        for client in clients:
            await client.wait_end()
        assert daemon.app.hub.listener_count == 0 and registry(daemon).count == 0
    finally:
        if not stopped:
            await stop_daemon(daemon)


@pytest_twisted.ensureDeferred
async def test_removed_user_and_revoked_token_end_their_streams(es: LiveDaemon) -> None:
    """Credentials revoked mid-stream: a revoked token's stream ends at the next auth
    generation check, the user's password stream survives it; removing the user ends the
    rest."""
    await es.add_user("alice")
    token = await es.add_token("alice")
    by_token = await open_stream(es_url(es.base), bearer(token))
    by_password = await open_stream(es_url(es.base), basic("alice", "secret"))
    await es.app.auth.check_generation()  # remember the current generation
    (record,) = await es.app.store.list_tokens("alice")
    assert await es.app.store.revoke_token(record.id)
    await es.app.auth.check_generation()
    await by_token.wait_end()
    assert not by_password.ended.called
    assert await es.app.store.remove_user("alice")
    await es.app.auth.check_generation()
    await by_password.wait_end()
    await wait_for(lambda: es.app.hub.listener_count == 0, "every listener to go")


@pytest_twisted.ensureDeferred
async def test_other_methods_get_405(es: LiveDaemon) -> None:
    """Only GET (and the OPTIONS preflight) are served; others get 405 with Allow."""
    for method in ("POST", "HEAD", "DELETE"):
        response = await treq.request(method, es_url(es.base), headers=basic("a", "b"))
        assert response.code == 405
        assert header(response, "Allow") == "GET, OPTIONS"
        await response.content()
