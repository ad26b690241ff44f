"""HTTP/2 on the JMAP site, in memory: an ``h2`` client state machine talks to a
:class:`JMAPSite` channel whose transport says ALPN chose ``h2``; time is a Clock.

The two defects of Twisted's HTTP/2 server the daemon must not have: a stream that
stays silent longer than the 60 s idle timeout (an EventSource with ``ping=100``) was
GOAWAY'd with PROTOCOL_ERROR, and the over-size refusal wrote raw HTTP/1.1 to a
stream's ``transport`` (None), so the client never got an answer. Checklist: API-21.
"""

from __future__ import annotations

import json
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from jmappushd.web.http2 import FRAMES_PER_TURN, JMAPH2Connection
from jmappushd.web.site import JMAPChannel, JMAPSite

MAX_BODY = 100
IDLE = 60  # Twisted's default idle timeout (s), the site's body deadline too


class Streams(Resource):
    """``GET /stream`` stays open (like an EventSource); ``POST /echo`` answers its body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.open: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.write(b": hello\n\n")
        self.open.append(request)
        return NOT_DONE_YET

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        return b"got " + request.content.read()


class TLSLikeTransport(StringTransport):
    """What the channel sees of a TLS connection on which ALPN picked ``h2``."""

    negotiatedProtocol = b"h2"

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class Peer:
    """An HTTP/2 client (the ``h2`` library) wired to one server channel in memory."""

    def __init__(self, clock: Clock, site: JMAPSite, alpn: bytes | None = b"h2") -> None:
        self.clock = clock
        self.transport = TLSLikeTransport()
        self.transport.negotiatedProtocol = alpn  # type: ignore[assignment]
        channel = site.buildProtocol(None)
        assert isinstance(channel, JMAPChannel)
        self.channel = channel
        channel.makeConnection(self.transport)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.flush()

    def flush(self) -> list[h2.events.Event]:
        """Exchange bytes both ways until quiet; return the client's new events."""
        new: list[h2.events.Event] = []
        for _ in range(50):
            out = self.conn.data_to_send()
            if out:
                self.channel.dataReceived(out)
            self.clock.advance(0)  # Twisted's h2 send loop runs on callLater(0)
            data = self.transport.value()
            self.transport.clear()
            if not data and not out:
                break
            if data:
                new += self.conn.receive_data(data)
        self.events += new
        return new

    def request(self, method: str, path: str, body: bytes | None = None,
                length: bool = True) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "https"),
                   (":authority", "localhost")]
        if body is not None and length:
            headers.append(("content-length", str(len(body))))
        self.conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.flush()
        return stream_id

    def response(self, stream_id: int) -> tuple[int | None, bytes, bool]:
        """Status, body so far, and whether the server ended the stream."""
        status: int | None = None
        body = b""
        ended = False
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
        return status, body, ended

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for event in self.events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return event
        return None


def make_site(clock: Clock, resource: Resource, http2: bool = True,
              header_timeout: float = 10) -> JMAPSite:
    return JMAPSite(resource, max_body=MAX_BODY, name="jmap", access_log=False,
                    header_timeout=header_timeout, http2=http2, reactor=clock)


def test_alpn_offers_h2_only_when_configured() -> None:
    """[server] http2: the site offers h2 before http/1.1 through ALPN when true, and only
    http/1.1 when false, although h2 is installed."""
    clock = Clock()
    assert make_site(clock, Streams()).acceptableProtocols() == [b"h2", b"http/1.1"]
    assert make_site(clock, Streams(), http2=False).acceptableProtocols() == [b"http/1.1"]


def test_h2_connection_takes_over_and_serves() -> None:
    """A channel whose transport negotiated h2 hands it to the HTTP/2 connection, which
    answers a request on a stream."""
    clock = Clock()
    peer = Peer(clock, make_site(clock, Streams()))
    stream = peer.request("POST", "/echo", b"hi")
    assert isinstance(peer.channel.h2, JMAPH2Connection)
    assert peer.response(stream) == (200, b"got hi", True)


def test_long_silent_stream_is_not_timed_out() -> None:
    """Defect 1: a stream that sends nothing for 250 s (an EventSource with ping=100 sends
    every 100 s) keeps its connection: no GOAWAY while a stream is open. Once the last
    stream ends, the idle timeout applies again: GOAWAY(NO_ERROR) 60 s later."""
    clock = Clock()
    resource = Streams()
    peer = Peer(clock, make_site(clock, resource))
    stream = peer.request("GET", "/stream")
    assert peer.response(stream) == (200, b": hello\n\n", False)
    for _ in range(25):
        clock.advance(10)
        peer.flush()
    assert peer.goaway() is None
    assert not peer.transport.disconnecting
    (request,) = resource.open
    request.write(b": still here\n\n")
    peer.flush()
    assert peer.response(stream)[1].endswith(b": still here\n\n")
    request.finish()
    peer.flush()
    assert peer.response(stream)[2]
    clock.advance(IDLE - 1)
    peer.flush()
    assert peer.goaway() is None
    clock.advance(2)
    peer.flush()
    terminated = peer.goaway()
    assert terminated is not None and terminated.error_code == h2.errors.ErrorCodes.NO_ERROR


def _limit_problem(body: bytes) -> None:
    problem = json.loads(body)
    assert problem["type"] == "urn:ietf:params:jmap:error:limit"
    assert problem["limit"] == "maxSizeRequest"


def test_oversize_body_gets_an_h2_response() -> None:
    """Defect 2, API-21: a body over the limit, announced by content-length or only
    streamed, gets a complete HTTP/2 400 limit problem and a RST_STREAM(NO_ERROR); the
    connection stays usable."""
    clock = Clock()
    peer = Peer(clock, make_site(clock, Streams()))
    big = b"x" * (MAX_BODY + 50)
    for length in (True, False):
        stream = peer.request("POST", "/echo", big, length=length)
        status, body, ended = peer.response(stream)
        assert (status, ended) == (400, True), length
        _limit_problem(body)
    assert peer.goaway() is None
    stream = peer.request("POST", "/echo", b"small")
    assert peer.response(stream) == (200, b"got small", True)


def test_refusal_before_body_resets_the_stream() -> None:
    """RFC 9113 §8.1: after the early 400 the server resets the stream with NO_ERROR, so
    a client still sending its body stops; what it sends after is ignored."""
    clock = Clock()
    peer = Peer(clock, make_site(clock, Streams()))
    stream_id = peer.conn.get_next_available_stream_id()
    peer.conn.send_headers(stream_id, [(":method", "POST"), (":path", "/echo"),
                                       (":scheme", "https"), (":authority", "localhost"),
                                       ("content-length", str(MAX_BODY * 10))])
    peer.flush()
    status, body, ended = peer.response(stream_id)
    assert (status, ended) == (400, True)
    _limit_problem(body)
    resets = [e for e in peer.events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [
        (stream_id, h2.errors.ErrorCodes.NO_ERROR)]
    assert peer.goaway() is None and not peer.transport.disconnecting


def test_slow_body_gets_408_on_its_stream() -> None:
    """Slow clients over h2: a body not complete within the idle timeout after its headers
    is answered 408 on its stream (the connection and other streams live on)."""
    clock = Clock()
    resource = Streams()
    peer = Peer(clock, make_site(clock, resource))
    other = peer.request("GET", "/stream")
    stream_id = peer.conn.get_next_available_stream_id()
    peer.conn.send_headers(stream_id, [(":method", "POST"), (":path", "/echo"),
                                       (":scheme", "https"), (":authority", "localhost"),
                                       ("content-length", "10")])
    peer.conn.send_data(stream_id, b"abc")
    peer.flush()
    clock.advance(IDLE + 1)
    peer.flush()
    status, body, ended = peer.response(stream_id)
    assert (status, ended) == (408, True)
    assert json.loads(body)["status"] == 408
    assert peer.response(other)[:2] == (200, b": hello\n\n")
    assert peer.goaway() is None


def test_no_request_within_header_timeout_closes() -> None:
    """header-timeout over h2: a connection that sends its preface but no request within
    [server] header-timeout gets GOAWAY and is closed."""
    clock = Clock()
    peer = Peer(clock, make_site(clock, Streams(), header_timeout=10))
    clock.advance(11)
    peer.flush()
    assert peer.goaway() is not None
    assert peer.transport.disconnecting


def test_http2_off_keeps_http11_even_if_alpn_said_h2() -> None:
    """With http2 false the channel never becomes HTTP/2 (ALPN would not offer it)."""
    clock = Clock()
    site = make_site(clock, Streams(), http2=False)
    channel = site.buildProtocol(None)
    assert isinstance(channel, JMAPChannel)
    transport = TLSLikeTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert channel.h2 is None
    assert transport.value().startswith(b"HTTP/1.1 200")


def test_frames_queued_together_leave_in_one_turn() -> None:
    """Frames queued in one reactor iteration leave in the next one together, at most
    FRAMES_PER_TURN per iteration: Twisted sent one frame per iteration (a callLater(0)
    after each), so 16 WebSocket answers were 16 polls, TLS records and TCP sends.
    Frames, order and content are unchanged; nothing is left scheduled after."""
    clock = Clock()
    streams = Streams()
    peer = Peer(clock, make_site(clock, streams))
    ids = [peer.request("GET", "/stream") for _ in range(FRAMES_PER_TURN + 6)]
    assert len(streams.open) == len(ids)
    turns: list[float] = []
    schedule = clock.callLater

    def counting(delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        if delay == 0 and getattr(f, "__name__", "") == "_sendPrioritisedData":
            turns.append(delay)
        return schedule(delay, f, *args, **kwargs)

    clock.callLater = counting  # type: ignore[method-assign,assignment]
    for request in streams.open:
        request.write(b"data: x\n\n")
    for _ in range(10):
        clock.advance(0)
    events = peer.conn.receive_data(peer.transport.value())
    data = [(e.stream_id, e.data) for e in events if isinstance(e, h2.events.DataReceived)]
    assert data == [(sid, b"data: x\n\n") for sid in ids]
    # the first write wakes the loop: one frame and a turn; that turn sends 64 and
    # schedules one more for the last 5 (Twisted: one turn per frame, 70)
    assert len(turns) == 2
    assert not clock.getDelayedCalls()
