"""The access log: one line per HTTP request and one per push session, however it ends.

HTTP requests go through a real ``JMAPSite`` channel on a ``StringTransport``; EventSource
streams and WebSockets are driven on fake transports with a ``task.Clock``, their requests
made by a ``JMAPSite`` as the daemon's are. Lines are caught with a Logger observer.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.config import Config, parse_config
from jmappushd.core.connections import EndReason
from jmappushd.core.hub import Change, Hub, LocalBus
from jmappushd.transports.eventsource.registry import StreamRegistry
from jmappushd.transports.eventsource.stream import EventStream, StreamContext
from jmappushd.transports.websocket.protocol import JMAPWebSocketProtocol
from jmappushd.web.clientaddr import ClientAddresses
from jmappushd.web.site import JMAPSite
from tests.store_backends import open_memory_store
from tests.support import (
    RequestHeaders,
    config_text,
    free_port,
    start_daemon,
    stop_daemon,
)
from tests.test_eventsource_live import es_url, open_stream, wait_for
from tests.test_websocket_helpers import (
    HANDSHAKE,
    FakeTransport,
    Harness,
    _Stand_in_Resource,
    basic_header,
    client_frame,
    connect,
    write_config,
)

TRUSTED = ClientAddresses(["127.0.0.1"])
SECRET = "tok-SECRET-123"


class Page(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"hello"


def site(clients: ClientAddresses = TRUSTED, enabled: bool = True
         ) -> tuple[JMAPSite, list[str]]:
    """A JMAPSite whose access-log lines are collected (formatted) in the returned list."""
    jmap = JMAPSite(Page(), max_body=1000, name="jmap", access_log=enabled, clients=clients)
    lines: list[str] = []

    def collect(event: Any) -> None:
        lines.append(formatEvent(event))

    jmap.accesslog.log = Logger(namespace="jmappushd.access",
                                observer=cast(ILogObserver, collect))
    return jmap, lines


def site_request(jmap: JMAPSite, peer: str = "127.0.0.1", path: bytes = b"/jmap/x",
                 **headers: str) -> Request:
    """A request object as ``jmap`` makes them, from ``peer``, for GET ``path``."""
    channel = DummyChannel()
    channel.factory = jmap  # type: ignore[attr-defined]  # finish() logs through it
    request = jmap.requestFactory(channel)
    assert isinstance(request, Request)
    request.client = IPv4Address("TCP", peer, 41000)
    request.method, request.path = b"GET", path
    request.uri = path + b"?access_token=" + SECRET.encode()
    request.clientproto = b"HTTP/1.0"
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name.replace("_", "-"), [value.encode()])
    return request


# -- HTTP requests --------------------------------------------------------------------------


def test_http_line_has_the_forwarded_client_and_no_query_string() -> None:
    """A request through the trusted proxy is logged with the client address nginx saw,
    the path without its query (an access_token stays out of the log), status, octets
    and duration."""
    jmap, lines = site()
    channel = jmap.buildProtocol(IPv4Address("TCP", "127.0.0.1", 41000))
    assert channel is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 41000))
    channel.makeConnection(transport)
    channel.dataReceived(
        b"GET /jmap/x?access_token=" + SECRET.encode() + b" HTTP/1.1\r\nHost: a\r\n"
        b"X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\nAuthorization: Bearer " + SECRET.encode()
        + b"\r\n\r\n")
    assert b"hello" in transport.value()
    (line,) = lines
    site_name, client, method, path, status, length, duration = line.split()
    assert (site_name, client, method, path, status, length) == (
        "jmap", "198.51.100.7", "GET", "/jmap/x", "200", "5")
    assert duration.endswith("ms")
    assert SECRET not in line


def test_an_untrusted_peer_is_logged_as_itself() -> None:
    """Forwarding headers from a peer that is not a trusted proxy change nothing."""
    jmap, lines = site()
    request = site_request(jmap, peer="203.0.113.9", x_forwarded_for="198.51.100.7")
    request.setResponseCode(404)
    request.finish()
    assert lines[0].split()[1:5] == ["203.0.113.9", "GET", "/jmap/x", "404"]


def test_access_log_off_writes_nothing() -> None:
    """[log] access-log = false: no line for requests nor for sessions."""
    jmap, lines = site(enabled=False)
    request = site_request(jmap)
    request.finish()
    env = StreamEnv()
    stream = env.stream(site_request(jmap, path=b"/jmap/eventsource/"))
    stream.request.connectionLost(Failure(ConnectionDone()))
    assert lines == []


# -- EventSource --------------------------------------------------------------------------


class StreamEnv:
    """A hub on a clock and the shared stream context, as the EventSource resource has."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.bus = LocalBus()
        store = open_memory_store()
        self.hub = Hub(store, self.bus)
        defer.ensureDeferred(self.hub.start())
        self.registry = StreamRegistry(store)
        self.ctx = StreamContext(self.clock, self.hub, 0.0, _NoCount(), self.registry.discard)
        self.seq = 0

    def stream(self, request: Request, close_after: bool = False) -> EventStream:
        stream = EventStream(self.ctx, request, user_id="u1", credential_id="password:u1",
                             account_ids=frozenset({"A"}), types=None, interval=30,
                             close_after=close_after)
        self.registry.add(stream)
        stream.open()
        return stream

    def publish(self) -> None:
        self.seq += 1
        self.bus.announce(Change(self.seq, {"A": {"Email": f"s{self.seq}"}}))


class _NoCount:
    def inc(self) -> None:
        """Not counted here."""


def fields(line: str) -> dict[str, str]:
    """The positional fields and the ``closed=`` field of a session line."""
    site_name, client, method, path, status, length, duration, closed = line.split()
    assert duration.endswith("ms") and closed.startswith("closed=")
    return {"site": site_name, "client": client, "method": method, "path": path,
            "status": status, "length": length, "closed": closed[len("closed="):]}


def test_eventsource_closed_by_the_client_is_logged() -> None:
    """The bug this fixes: a stream the client closes never finishes, so twisted.web never
    logged it. Now its end is one line with closed=client and the octets sent."""
    jmap, lines = site()
    env = StreamEnv()
    request = site_request(jmap, path=b"/jmap/eventsource/", x_forwarded_for="198.51.100.7")
    stream = env.stream(request)
    env.publish()
    env.clock.advance(30)  # a ping too
    assert lines == []  # nothing while it is open
    sent = request.sentLength
    assert sent > 0
    request.connectionLost(Failure(ConnectionLost()))
    (line,) = lines
    assert fields(line) == {"site": "jmap", "client": "198.51.100.7", "method": "GET",
                            "path": "/jmap/eventsource/", "status": "200",
                            "length": str(sent), "closed": "client"}
    assert SECRET not in line
    stream.close()
    assert len(lines) == 1


@pytest.mark.parametrize("how", ["closeafter", "shutdown", "revoked"])
def test_eventsource_ended_by_the_server_is_logged_once(how: str) -> None:
    """closeafter=state, shutdown and revoked credentials end the response: one line with
    closed=server, not a second one when twisted.web finishes the request."""
    jmap, lines = site()
    env = StreamEnv()
    request = site_request(jmap, path=b"/jmap/eventsource/")
    stream = env.stream(request, close_after=how == "closeafter")
    if how == "closeafter":
        env.publish()
    else:
        stream.end(EndReason.SHUTDOWN if how == "shutdown" else EndReason.REVOKED)
    assert request.finished
    (line,) = lines
    assert fields(line)["closed"] == "server"
    assert fields(line)["length"] == str(request.sentLength)


def test_a_refused_eventsource_request_is_an_ordinary_line() -> None:
    """Before a stream opens (401, 400, 429) the request is logged when it finishes."""
    jmap, lines = site()
    request = site_request(jmap, path=b"/jmap/eventsource/")
    request.setResponseCode(401)
    request.finish()
    assert lines[0].split()[4] == "401" and "closed=" not in lines[0]


# -- WebSocket --------------------------------------------------------------------------------


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(write_config(tmp_path, "ws-heartbeat-interval = 5\nws-client-timeout = 12"))


class Upgrade(_Stand_in_Resource):
    """The stand-in for Autobahn's resource, sending a handshake of the test's choice."""

    def __init__(self, h: Harness, transport: FakeTransport, handshake: bytes) -> None:
        super().__init__(h.factory, transport)
        self.handshake = handshake

    def render(self, request: object) -> Any:
        proto = self.factory.buildProtocol(self.transport.getPeer())
        assert proto is not None
        self.transport.protocol = proto
        proto.makeConnection(self.transport)
        proto.dataReceived(self.handshake)
        return proto


def ws_connect(h: Harness, jmap: JMAPSite, handshake: bytes = HANDSHAKE,
               **headers: str) -> tuple[JMAPWebSocketProtocol, FakeTransport]:
    """Upgrade a request made by ``jmap``, as the handshake resource does."""
    transport = FakeTransport(h.clock)
    request = site_request(jmap, path=b"/jmap/ws", **headers)
    proto = h.factory.upgrade(Upgrade(h, transport, handshake), request,
                              h.store.add("alice", "A"))
    transport.clear()
    return proto, transport


def close_frame(code: int) -> bytes:
    return client_frame(struct.pack("!H", code), opcode=8)


def test_websocket_closed_by_the_client(h: Harness) -> None:
    """A Close from the client: one line at the end, status 101, closed=client, with the
    octets Autobahn counted (handshake response, frames, the Close reply)."""
    jmap, lines = site()
    proto, _transport = ws_connect(h, jmap, x_forwarded_for="198.51.100.7")
    h.send(proto, {"@type": "Request", "using": ["urn:ietf:params:jmap:core"],
                   "methodCalls": [["Core/echo", {"x": 1}, "c"]]})
    assert lines == []
    proto.dataReceived(close_frame(1000))
    h.clock.advance(0)
    (line,) = lines
    got = fields(line)
    assert got | {"length": ""} == {"site": "jmap", "client": "198.51.100.7", "method": "GET",
                                    "path": "/jmap/ws", "status": "101", "length": "",
                                    "closed": "client"}
    stats = proto.trafficStats
    assert int(got["length"]) == (stats.preopenOutgoingOctetsWireLevel
                                  + stats.outgoingOctetsWireLevel) > 100
    assert SECRET not in line


def test_websocket_dropped_by_the_client(h: Harness) -> None:
    """A TCP connection lost without a closing handshake is the client's doing."""
    jmap, lines = site()
    proto, _transport = ws_connect(h, jmap)
    proto.connectionLost(Failure(ConnectionLost()))
    assert fields(lines[0])["closed"] == "client"


@pytest.mark.parametrize("how", ["shutdown", "revoked", "binary"])
def test_websocket_closed_by_the_server(h: Harness, how: str) -> None:
    """Shutdown (1001), revoked credentials (1008), a protocol refusal (1003): closed=server,
    once, also when the client's Close reply ends it."""
    jmap, lines = site()
    proto, transport = ws_connect(h, jmap)
    if how == "binary":
        proto.dataReceived(client_frame(b"\x00", opcode=2))
    else:
        proto.end(EndReason.SHUTDOWN if how == "shutdown" else EndReason.REVOKED)
    assert 8 in [op for op, _ in transport.take()]
    proto.dataReceived(close_frame(1000))
    h.clock.advance(0)
    (line,) = lines
    assert fields(line)["closed"] == "server"


def test_websocket_timed_out(h: Harness) -> None:
    """ws-client-timeout: a client that sends nothing for 12 s is closed with closed=timeout,
    also when the unanswered Close is aborted after the grace period."""
    jmap, lines = site()
    ws_connect(h, jmap)
    h.clock.advance(12)
    assert lines == []
    h.clock.advance(5)
    h.clock.advance(0)
    (line,) = lines
    assert fields(line)["closed"] == "timeout"


def test_websocket_handshake_refused_by_autobahn(h: Harness) -> None:
    """An upgrade Autobahn itself refuses (here: no Sec-WebSocket-Key) is logged with the
    HTTP status it answered."""
    jmap, lines = site()
    broken = HANDSHAKE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"")
    _proto, _transport = ws_connect(h, jmap, handshake=broken)
    h.clock.advance(0)
    (line,) = lines
    assert fields(line)["status"] == "400" and fields(line)["closed"] == "server"


def test_websocket_of_another_site_is_not_logged(h: Harness) -> None:
    """A request not made by a JMAPSite (as in the protocol's unit tests) logs nothing."""
    proto, _transport = h.connect(h.store.add("bob", "B"))
    assert proto.access is None
    proto.connectionLost(Failure(ConnectionDone()))


# -- live: the daemon's own wiring, real sockets ---------------------------------------------


def behind_proxy_config(tmp_path: Path) -> Config:
    """A daemon on free ports that trusts 127.0.0.1 as its reverse proxy."""
    text = config_text(tmp_path / "state", free_port(), free_port()).replace(
        "\n[admin]", "trusted-proxies = 127.0.0.1\n\n[admin]")
    path = tmp_path / "jmappushd.ini"
    path.write_text(text)
    return parse_config(text, str(path), environ={})


class AccessLines:
    """Collects the daemon's access-log lines from the global log publisher."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: Any) -> None:
        if event.get("log_namespace") == "jmappushd.access":
            self.lines.append(formatEvent(event))

    def matching(self, *parts: str) -> list[str]:
        return [line for line in self.lines if all(p in line for p in parts)]


@pytest.fixture
def access_lines() -> Any:
    observer = AccessLines()
    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    yield observer
    globalLogPublisher.removeObserver(cast(ILogObserver, observer))


@pytest_twisted.ensureDeferred
async def test_live_sessions_closed_by_their_clients_are_logged(
        tmp_path: Path, access_lines: AccessLines) -> None:
    """Against the wired daemon: an EventSource stream opened with an access_token and
    closed by the client, and a WebSocket the client closes, each leave one line with the
    client address from X-Forwarded-For (127.0.0.1 is trusted), closed=client, and no token."""
    daemon = await start_daemon(behind_proxy_config(tmp_path))
    try:
        await daemon.add_user("alice")
        token = await daemon.add_token("alice")
        forwarded: RequestHeaders = {"X-Forwarded-For": "198.51.100.7"}
        stream = await open_stream(es_url(daemon.base, access_token=token), forwarded)
        stream.close()  # the 200 and the opening comment have arrived
        await wait_for(lambda: access_lines.matching("/jmap/eventsource/", "closed=client"),
                       f"the stream line in {access_lines.lines}")
        (es_line,) = access_lines.matching("/jmap/eventsource/")
        assert fields(es_line)["client"] == "198.51.100.7"
        assert token not in es_line and "access_token" not in es_line

        client = await connect(daemon.base, {**basic_header("alice"),
                                             "X-Forwarded-For": "198.51.100.8"})
        await client.bye()
        await wait_for(lambda: access_lines.matching("/jmap/ws", "closed="), "the ws line")
        (ws_line,) = access_lines.matching("/jmap/ws")
        assert fields(ws_line) | {"length": "0"} == {
            "site": "jmap", "client": "198.51.100.8", "method": "GET", "path": "/jmap/ws",
            "status": "101", "length": "0", "closed": "client"}
        assert int(fields(ws_line)["length"]) > 0
    finally:
        await stop_daemon(daemon)
