"""``[upstream] changes = eventsource`` end to end, against a small fake upstream.

Cyrus 3.6's own EventSource answers 204, so the upstream here is written in the test:
twisted.web resources on 127.0.0.1 serving a JMAP session (Basic logins for alice and the
reader, one mail account ``A1``), an API answering ``Foo/get`` with ``ids: []`` with states
the test sets, and a working ``text/event-stream`` at the session's ``eventSourceUrl``.
A state event there must reach alice's EventSource on the gateway carrying the state the
API then returns (the event is a trigger; the state is read back), and after the fake
drops its stream the gateway must reconnect with the last event id and go on.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest_twisted
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTCP, ITCPTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.gateway_support import MAIL, reader_secret
from tests.support import LiveDaemon, basic, make_config, start_daemon, stop_daemon
from tests.test_eventsource_live import es_url, open_stream

CORE = "urn:ietf:params:jmap:core"
USERS = {"alice": "alice-pw", "reader": "reader-pw"}
ACCOUNT = "A1"


def login(request: Request) -> str | None:
    """The user of a right Basic Authorization, else None."""
    value = request.getHeader("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    user, _, password = base64.b64decode(token).decode().partition(":")
    return user if USERS.get(user) == password else None


def refuse(request: Request) -> bytes:
    request.setResponseCode(401)
    request.setHeader("www-authenticate", 'Basic realm="fake"')
    return b""


class FakeUpstream(Resource):
    """Session, API and event stream of a JMAP server whose push works."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.states = {"Mailbox": "m0", "Email": "e0", "Thread": "t0"}
        self.streams: list[Request] = []
        self.stream_headers: list[dict[str, str | None]] = []
        self.api_calls: list[tuple[str, list[Any]]] = []
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def session(self, user: str) -> dict[str, Any]:
        account = {"name": "alice@fake", "isPersonal": user == "alice", "isReadOnly": False,
                   "accountCapabilities": {MAIL: {}}}
        return {
            "capabilities": {CORE: {"maxSizeUpload": 50_000_000, "maxConcurrentUpload": 4,
                                    "maxSizeRequest": 10_000_000, "maxConcurrentRequests": 4,
                                    "maxCallsInRequest": 16, "maxObjectsInGet": 500,
                                    "maxObjectsInSet": 500, "collationAlgorithms": []},
                             MAIL: {}},
            "accounts": {ACCOUNT: account},
            "primaryAccounts": {MAIL: ACCOUNT},
            "username": user,
            "apiUrl": "/jmap/api",
            "downloadUrl": "/jmap/download/{accountId}/{blobId}/{name}?accept={type}",
            "uploadUrl": "/jmap/upload/{accountId}/",
            "eventSourceUrl": "/jmap/events?types={types}&closeafter={closeafter}&ping={ping}",
            "state": "session-1",
        }

    def render_GET(self, request: Request) -> Any:
        user = login(request)
        if user is None:
            return refuse(request)
        if request.path == b"/jmap/session":
            request.setHeader("content-type", "application/json")
            return json.dumps(self.session(user)).encode()
        if request.path == b"/jmap/events":
            request.setHeader("content-type", "text/event-stream")
            request.setHeader("cache-control", "no-cache")
            request.write(b": hello\n\n")
            self.streams.append(request)
            self.stream_headers.append({
                "authorization": request.getHeader("authorization"),
                "last-event-id": request.getHeader("last-event-id"),
                "query": request.uri.decode()})
            request.notifyFinish().addBoth(lambda _: self._gone(request))
            self._wake()
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b""

    def render_POST(self, request: Request) -> Any:
        user = login(request)
        if user is None:
            return refuse(request)
        assert request.content is not None
        body = json.loads(request.content.read())
        self.api_calls.append((user, body["methodCalls"]))
        responses = []
        for name, args, call_id in body["methodCalls"]:
            kind = name.split("/")[0]
            if name.endswith("/get") and kind in self.states and args.get("ids") == []:
                responses.append([name, {"accountId": args["accountId"], "list": [],
                                         "notFound": [], "state": self.states[kind]}, call_id])
            else:
                responses.append(["error", {"type": "unknownMethod"}, call_id])
        self._wake()
        request.setHeader("content-type", "application/json")
        return json.dumps({"methodResponses": responses, "sessionState": "session-1"}).encode()

    def _gone(self, request: Request) -> None:
        if request in self.streams:
            self.streams.remove(request)
        self._wake()

    def push(self, event_id: str, changed: dict[str, dict[str, str]]) -> None:
        """A ``state`` event on every open stream."""
        data = json.dumps({"@type": "StateChange", "changed": changed})
        for request in self.streams:
            request.write(f"event: state\nid: {event_id}\ndata: {data}\n\n".encode())

    def drop(self) -> None:
        """Cut every open stream's connection, as a restarting upstream would."""
        for request in list(self.streams):
            assert request.channel is not None
            cast(ITCPTransport, request.channel.transport).abortConnection()

    def _wake(self) -> None:
        for check, d in list(self._waiters):
            if check():
                self._waiters.remove((check, d))
                d.callback(None)

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Wait (event-driven, bounded) until ``check()`` holds."""
        from twisted.internet import reactor

        if check():
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((check, d))
        d.addTimeout(timeout, reactor)
        try:
            await d
        except defer.TimeoutError:
            raise AssertionError(f"fake upstream: {what} not seen in {timeout}s") from None


@asynccontextmanager
async def fake_upstream() -> AsyncIterator[tuple[FakeUpstream, str]]:
    from twisted.internet import reactor

    upstream = FakeUpstream()
    endpoint = TCP4ServerEndpoint(cast(IReactorTCP, reactor), 0, interface="127.0.0.1")
    port: IListeningPort = await endpoint.listen(Site(upstream))
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    try:
        yield upstream, f"http://127.0.0.1:{address.port}"
    finally:
        for request in list(upstream.streams):
            assert request.channel is not None
            cast(ITCPTransport, request.channel.transport).abortConnection()
        stopped = port.stopListening()
        assert stopped is not None  # a listening TCP port stops asynchronously
        await stopped


async def eventsource_gateway(tmp_path: Path, base: str) -> LiveDaemon:
    secret = reader_secret(tmp_path)
    upstream = (f"session-url = {base}/jmap/session\nchanges = eventsource\n"
                f"reader-user = reader\nreader-password-file = {secret}\ndebounce = 0\n")
    config = make_config(tmp_path, sections={"upstream": upstream,
                                             "event-source": "event-source-throttle = 0"})
    return await start_daemon(config)


@pytest_twisted.ensureDeferred
async def test_upstream_state_events_reach_a_client_and_resume_after_a_drop(
        tmp_path: Path) -> None:
    """ES-8 through the gateway: the fake's state event → alice's stream gets the state its
    API returns; the fake cuts the stream → the gateway reconnects with Last-Event-ID and
    the next event arrives too, carrying only the type that moved."""
    async with fake_upstream() as (upstream, base):
        d = await eventsource_gateway(tmp_path, base)
        try:
            await upstream.until(lambda: len(upstream.streams) == 1, "the gateway's stream")
            first = upstream.stream_headers[0]
            assert first["authorization"] == basic("reader", "reader-pw")["Authorization"]
            assert first["last-event-id"] is None
            assert "types=*" in str(first["query"]) and "closeafter=no" in str(first["query"])

            stream = await open_stream(es_url(d.base), basic("alice", "alice-pw"))
            try:
                upstream.states["Email"] = "e1"
                upstream.push("ev-1", {ACCOUNT: {"Email": "upstream-says-e1"}})
                changed, _ = await stream.next_state(timeout=5)
                # The state pushed is the one the API returns, not the event's.
                assert changed == {ACCOUNT: {"Mailbox": "m0", "Email": "e1", "Thread": "t0"}}
                assert upstream.api_calls[-1][0] == "reader"

                upstream.drop()
                await upstream.until(lambda: len(upstream.stream_headers) == 2
                                     and len(upstream.streams) == 1, "a reconnection")
                assert upstream.stream_headers[1]["last-event-id"] == "ev-1"
                upstream.states["Email"] = "e2"
                upstream.push("ev-2", {ACCOUNT: {"Email": "e2"}})
                changed, _ = await stream.next_state(timeout=5)
                assert changed == {ACCOUNT: {"Email": "e2"}}
            finally:
                stream.close()
        finally:
            await stop_daemon(d)
        await upstream.until(lambda: not upstream.streams, "the gateway closing its stream")
