"""net._fastpath: each private-internals fast path matches the library's public code, and
when the start-up check finds a library changed, the public path is used with the same
output and one log line.

No reactor: a ``tcp.Server`` on a socketpair (or, where a request asks for its
addresses, a loopback TCP pair) with a MemoryReactor, twisted.web Requests on
StringTransports. The WebSocket frame fast path
has its own differential test (tests/test_websocket_frames_differential.py).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from json import encoder as json_encoder
from typing import Any

import pytest
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import abstract, tcp
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import Logger
from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request as SiteRequest
from twisted.web.server import Site

from jmappushd.jmap import ijson
from jmappushd.net import _fastpath
from jmappushd.net.guardedport import GuardedPort
from jmappushd.net.sendnow import send_now
from jmappushd.transports.webpush.sender import request_headers
from jmappushd.web.responses import write_body
from tests.support import log_into


@pytest.fixture(autouse=True)
def rechecked() -> Iterator[None]:
    """Every test leaves the flags as the installed libraries set them."""
    yield
    assert _fastpath.check() == []


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(_fastpath, "_log", Logger(observer=log_into(events)))
    monkeypatch.setattr(_fastpath, "_warned", set())
    return events


def test_the_installed_libraries_pass() -> None:
    """Twisted, Autobahn and json as installed still have everything the fast paths read."""
    assert _fastpath.check() == []
    assert _fastpath.tcpwrite.TCP_SEND and _fastpath.webserver.CHUNK_WRITE
    assert _fastpath.agent.RAW_HEADERS and _fastpath.webserver.WHOLE_RESPONSE
    assert _fastpath.cjson.C_ENCODER and _fastpath.websocket.WS_FRAMES
    assert _fastpath.agent.AGENT_PLAN and _fastpath.h2_data.H2_DATA
    assert _fastpath.wsproto_state.WSPROTO_FRAMES


# -- send_now on a tcp.Server --


ServerEnd = tuple[tcp.Server, socket.socket, MemoryReactor]


def served(ours: socket.socket, theirs: socket.socket) -> Iterator[ServerEnd]:
    """A ``tcp.Server`` on ``ours`` with a MemoryReactor (which shows whether anything
    was queued) and the peer's end; both closed afterwards."""
    reactor = MemoryReactor()
    transport = tcp.Server(ours, _fastpath.tcpwrite.Null(), ("127.0.0.1", 1), None,  # type: ignore[arg-type]
                           0, reactor)
    yield transport, theirs, reactor
    ours.close()
    theirs.close()


@pytest.fixture
def server() -> Iterator[ServerEnd]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    yield from served(ours, theirs)


def test_send_now_sends_at_once(server: tuple[tcp.Server, socket.socket, MemoryReactor]
                                ) -> None:
    """With the fast path on and nothing queued, the peer has the bytes on return and
    the reactor was never asked to write."""
    transport, peer, reactor = server
    send_now(transport, b"event")
    assert peer.recv(100) == b"event"
    assert transport not in reactor.writers


def test_send_now_sends_at_once_on_a_guarded_port_connection() -> None:
    """The listeners' connections (a ``tcp.Server`` subclass that only adds to
    ``connectionLost``) take the direct send too: the peer has the bytes on return."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    reactor = MemoryReactor()
    cls = GuardedPort.transport
    assert cls is not tcp.Server and issubclass(cls, tcp.Server)
    transport = cls(ours, _fastpath.tcpwrite.Null(), ("127.0.0.1", 1), None, 0,  # type: ignore[arg-type]
                    reactor)
    try:
        send_now(transport, b"event")
        assert theirs.recv(100) == b"event"
        assert transport not in reactor.writers
    finally:
        ours.close()
        theirs.close()


class _Rewriting(tcp.Server):
    """A connection whose ``write`` is not Twisted's: a direct send would bypass it."""

    def write(self, data: bytes) -> None:
        super().write(data.upper())


def test_send_now_keeps_a_subclass_that_changes_writing() -> None:
    """A subclass overriding part of the write path gets ``transport.write``, never a
    direct send."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    reactor = MemoryReactor()
    transport = _Rewriting(ours, _fastpath.tcpwrite.Null(), ("127.0.0.1", 1), None,  # type: ignore[arg-type]
                           0, reactor)
    try:
        assert _fastpath.tcp_idle_socket(transport) is None
        send_now(transport, b"event")
        assert transport in reactor.writers and transport._tempDataLen == 5
    finally:
        ours.close()
        theirs.close()


def test_send_now_falls_back_to_write(server: tuple[tcp.Server, socket.socket, MemoryReactor],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Switched off, send_now is ``transport.write``: queued for the reactor, not sent."""
    transport, peer, reactor = server
    monkeypatch.setattr(_fastpath.tcpwrite, "TCP_SEND", False)
    send_now(transport, b"event")
    assert transport in reactor.writers and transport._tempDataLen == 5
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_a_changed_write_queue_switches_tcp_send_off(monkeypatch: pytest.MonkeyPatch,
                                                     logged: list[dict[str, Any]]) -> None:
    """A Twisted without ``_writeDisconnected`` fails the check: off, and logged once;
    a whole response, sent the same way, is off with it."""
    monkeypatch.delattr(abstract.FileDescriptor, "_writeDisconnected")
    assert _fastpath.check() == ["tcp-send", "whole-response"]
    assert _fastpath.check() == ["tcp-send", "whole-response"]
    assert not _fastpath.tcpwrite.TCP_SEND and not _fastpath.webserver.WHOLE_RESPONSE
    assert [e["path"] for e in logged] == ["tcp-send", "whole-response"]
    assert _fastpath.tcp_idle_socket(object()) is None


# -- one chunk of a chunked response --


def started_request() -> tuple[http.Request, StringTransport]:
    transport = StringTransport()
    channel = http.HTTPChannel()
    channel.timeOut = None
    channel.makeConnection(transport)
    request = http.Request(channel)
    request.clientproto, request.method = b"HTTP/1.1", b"GET"
    request.write(b"retry: 5000\n\n")
    return request, transport


@pytest.mark.parametrize("event", [b"x", b"event: state\ndata: {}\n\n", b"\xe2\x82\xac" * 5000])
def test_chunk_framing_is_request_write(event: bytes) -> None:
    """ES wire format: an event framed here is byte for byte what ``Request.write``
    sends, and ``sentLength`` (the access log's length) counts it the same."""
    public, public_wire = started_request()
    fast, fast_wire = started_request()
    public.write(event)
    transport = _fastpath.chunk_transport(fast, event)
    assert transport is fast_wire
    send_now(transport, _fastpath.chunk(event))
    assert fast_wire.value() == public_wire.value()
    assert fast.sentLength == public.sentLength


def test_chunk_fast_path_only_where_request_write_would_chunk() -> None:
    """Before the headers, after finish, once disconnected, or for an empty write (which
    ``Request.write`` sends nothing for), the caller must use ``Request.write``."""
    channel = http.HTTPChannel()
    channel.timeOut = None
    channel.makeConnection(StringTransport())
    fresh = http.Request(channel)
    assert _fastpath.chunk_transport(fresh, b"x") is None
    request, _ = started_request()
    assert _fastpath.chunk_transport(request, b"") is None
    request._disconnected = True
    assert _fastpath.chunk_transport(request, b"x") is None
    finished, _ = started_request()
    finished.finished = 1  # what Request.finish sets
    assert _fastpath.chunk_transport(finished, b"x") is None


def test_a_changed_request_switches_chunk_write_off(monkeypatch: pytest.MonkeyPatch,
                                                    logged: list[dict[str, Any]]) -> None:
    """A Request without ``sentLength`` fails the check; the stream then writes through
    ``Request.write`` (chunk_transport gives no transport)."""
    monkeypatch.delattr(http.Request, "sentLength")
    # Request.write itself counts sentLength: the whole-response probe fails with it.
    assert _fastpath.check() == ["chunk-write", "whole-response"]
    monkeypatch.undo()
    request, _ = started_request()
    assert _fastpath.chunk_transport(request, b"x") is None
    assert [e["path"] for e in logged] == ["chunk-write", "whole-response"]


# -- a whole response in one send --


@pytest.fixture
def loopback() -> Iterator[ServerEnd]:
    """The same on a real loopback TCP connection: a request asks for its addresses."""
    ours, theirs = _fastpath.tcpwrite.loopback_pair()
    theirs.settimeout(5)
    yield from served(ours, theirs)


def answered(transport: object, method: bytes, version: bytes) -> SiteRequest:
    channel = http.HTTPChannel()
    channel.timeOut = None
    channel.makeConnection(transport)
    channel.site = Site(Resource())  # type: ignore[attr-defined]  # a site's Request reads it
    request = SiteRequest(channel)
    request.clientproto, request.method = version, method
    channel.requests.append(request)  # as the channel does for a parsed request line
    return request


def received(peer: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = peer.recv(n - len(data))
        assert more, "the connection closed early"
        data += more
    return data


@pytest.mark.parametrize(("status", "method", "version"), [
    (202, b"POST", b"HTTP/1.1"), (401, b"GET", b"HTTP/1.0"),
    (200, b"HEAD", b"HTTP/1.1"), (204, b"GET", b"HTTP/1.1")])
def test_a_whole_response_is_twisteds_bytes_in_one_send(
        loopback: ServerEnd, status: int,
        method: bytes, version: bytes) -> None:
    """write_body's response (status line, headers, body; none for HEAD and 204) is byte
    for byte what ``Request.write`` queues, sent before write_body returns without the
    socket ever joining the reactor's writers; the request ends as Twisted ends it."""
    transport, peer, reactor = loopback
    body = '{"detail":"caf\u00e9 \u2028"}'.encode()
    wire_of = StringTransport()
    public = answered(wire_of, method, version)
    write_body(public, status, body, b"application/json")
    fast = answered(transport, method, version)
    write_body(fast, status, body, b"application/json")
    assert transport not in reactor.writers and not transport._tempDataLen
    assert fast.finished and vars(fast).keys() == vars(public).keys()  # ended alike
    expected = wire_of.value()
    assert received(peer, len(expected)) == expected
    assert fast.sentLength == public.sentLength and fast.startedWriting


def test_a_whole_response_waits_behind_queued_data(
        loopback: ServerEnd) -> None:
    """With bytes still queued (an earlier response the reactor has not sent) the
    response queues behind them through ``Request.write``: order is kept."""
    transport, peer, _ = loopback
    transport.write(b"earlier")
    request = answered(transport, b"GET", b"HTTP/1.1")
    assert _fastpath.whole_response(request, b"{}") is None
    write_body(request, 200, b"{}", b"application/json")
    transport.doWrite()
    head = b"earlierHTTP/1.1 200 OK\r\n"
    assert received(peer, len(head)) == head


def test_whole_response_only_for_a_first_write_on_plain_tcp(
        loopback: ServerEnd) -> None:
    """Not on another transport (TLS, a test transport), not once the headers are out,
    and the channel's transport is the real one again after a gathered write."""
    transport, _, _ = loopback
    assert _fastpath.whole_response(answered(StringTransport(), b"GET", b"HTTP/1.1"),
                                    b"{}") is None
    request = answered(transport, b"GET", b"HTTP/1.1")
    request.setHeader(b"Content-Length", b"2")
    got = _fastpath.whole_response(request, b"{}")
    assert got is not None and got[0] is transport
    assert request.channel.transport is transport
    assert _fastpath.whole_response(request, b"{}") is None  # started writing


def test_a_changed_channel_switches_whole_response_off(
        monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]],
        loopback: ServerEnd) -> None:
    """A channel that writes its headers to a transport it kept from the connection,
    not to ``self.transport``, fails the probe: off, logged, and write_body leaves
    responses to ``Request.write`` again (queued, in Twisted's order)."""
    made = http.HTTPChannel.connectionMade

    def keep(self: http.HTTPChannel) -> None:
        self.kept = self.transport  # type: ignore[attr-defined]
        made(self)

    def elsewhere(self: http.HTTPChannel, version: bytes, code: bytes, reason: bytes,
                  headers: Headers) -> None:
        kept: StringTransport = self.kept  # type: ignore[attr-defined]
        kept.write(b"%s %s %s\r\n\r\n" % (version, code, reason))

    monkeypatch.setattr(http.HTTPChannel, "connectionMade", keep)
    monkeypatch.setattr(http.HTTPChannel, "writeHeaders", elsewhere)
    assert _fastpath.check() == ["whole-response"]
    assert [e["path"] for e in logged] == ["whole-response"]
    transport, peer, reactor = loopback
    request = answered(transport, b"GET", b"HTTP/1.1")
    write_body(request, 200, b"{}", b"application/json")
    assert transport in reactor.writers  # queued, as Twisted does
    transport.doWrite()
    assert received(peer, 21) == b"HTTP/1.1 200 OK\r\n\r\n{}"
    monkeypatch.undo()


# -- Headers --

SAMPLE = {"TTL": "2419200", "Urgency": "normal", "Content-Type": "application/octet-stream",
          "Authorization": "vapid t=eyJ0eXAiOiJKV1QifQ.e30.sig, k=BPk", "Topic": "t-1",
          "Content-Encoding": "aes128gcm"}


def public_headers(headers: dict[str, str]) -> Headers:
    return Headers({name: [value] for name, value in headers.items()})


def test_request_headers_are_what_headers_builds() -> None:
    """WP-1..WP-4: the directly filled Headers equal twisted.web's own for the same input."""
    built = request_headers(SAMPLE)
    assert built == public_headers(SAMPLE)
    assert sorted(built.getAllRawHeaders()) == sorted(public_headers(SAMPLE).getAllRawHeaders())


def test_without_raw_headers_the_constructor_is_used(monkeypatch: pytest.MonkeyPatch,
                                                     logged: list[dict[str, Any]]) -> None:
    """A Headers whose slots changed fails the check; the public constructor then builds
    the same headers."""
    monkeypatch.setattr(Headers, "__slots__", ["_other"])
    assert _fastpath.check() == ["raw-headers"]
    monkeypatch.undo()
    assert request_headers(SAMPLE) == public_headers(SAMPLE)
    assert [e["path"] for e in logged] == ["raw-headers"]


# -- the C JSON encoder --

DOCS: list[Any] = [
    {"@type": "StateChange", "changed": {"A": {"Email": "s1", "Mailbox": "s2"}}},
    {"é": "\u2028 \"quoted\" \\ \n\t", "n": [1, -2.5, 1e300, None, True, False], "e": {}},
    {"deep": [[{"x": [[]]}]], "big": 2**70, "emoji": "😀"},
    ["a list", 1],
    "a string",
]


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


@pytest.mark.parametrize("doc", DOCS)
def test_dumps_is_json_dumps(doc: Any) -> None:
    """The reused C encoder writes exactly what ``json.dumps`` with the same options does."""
    assert ijson.dumps(doc) == compact(doc)


def test_dumps_refuses_nan_like_json_dumps() -> None:
    """A non-finite float is a programming error on both paths."""
    with pytest.raises(ValueError):
        ijson.dumps({"x": float("nan")})


def test_without_the_c_encoder_dumps_is_unchanged(monkeypatch: pytest.MonkeyPatch,
                                                  logged: list[dict[str, Any]]) -> None:
    """A Python without ``c_make_encoder`` fails the check; ``dumps`` then uses the pure
    JSONEncoder and writes the same bytes."""
    monkeypatch.setattr(json_encoder, "c_make_encoder", None)
    assert _fastpath.check() == ["c-json-encoder"]
    assert _fastpath.c_encoder(lambda o: o) is None
    for doc in DOCS:
        assert ijson.dumps(doc) == compact(doc)
    assert [e["path"] for e in logged] == ["c-json-encoder"]


# -- Autobahn --


def test_a_changed_autobahn_switches_the_frame_fast_path_off(
        monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]]) -> None:
    """An Autobahn whose parser entry point moved fails the check; the WebSocket fast path
    is then off (its answers equal Autobahn's alone: the differential test)."""
    monkeypatch.setattr(WebSocketProtocol, "_dataReceived", None)
    assert _fastpath.check() == ["websocket-frames"]
    assert not _fastpath.websocket.WS_FRAMES
    assert [e["path"] for e in logged] == ["websocket-frames"]


def test_a_changed_wsproto_switches_the_h2_frame_fast_path_off(
        monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]]) -> None:
    """A wsproto whose frame decoder no longer keeps its partial header where the fast
    path reads it fails the check; the HTTP/2 WebSocket then feeds wsproto everything
    (tests/test_http2_frames_differential.py compares both)."""
    from wsproto.frame_protocol import FrameDecoder

    real_init = FrameDecoder.__init__

    def renamed(self: FrameDecoder, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        del self.header

    monkeypatch.setattr(FrameDecoder, "__init__", renamed)
    assert _fastpath.check() == ["wsproto-frames"]
    assert not _fastpath.wsproto_state.WSPROTO_FRAMES
    assert [e["path"] for e in logged] == ["wsproto-frames"]


def test_a_raising_probe_counts_as_failed() -> None:
    """A probe that raises (a changed signature) switches its path off instead of
    stopping the daemon's start-up."""
    def broken() -> bool:
        raise TypeError("changed")
    assert _fastpath._passes(broken) is False
