"""Slow clients (issue 11, defect 5): a request's headers and body must arrive in time.

The channel is driven in memory (a ``StringTransport`` and a ``task.Clock``); the
deadlines run on a timer wheel on that clock, so they fire at their due time rounded up
to its 0.1 s tick.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from jmappushd.net.headertimeout import Phase, RequestDeadline
from jmappushd.net.timerwheel import TimerWheel
from jmappushd.web.site import ABORT_GRACE_S, JMAPChannel, JMAPSite

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
GET = b"GET /ok HTTP/1.1\r\nHost: jmap.example\r\n\r\n"


class Ok(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> bytes:
        if request.path == b"/hold":
            self.held.append(request)
            return NOT_DONE_YET  # type: ignore[return-value]
        return b"ok"

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        return b"got " + request.content.read()


class Harness:
    """One connection to a JMAPSite on a test clock."""

    def __init__(self, header_timeout: float = 10, idle: float = 60) -> None:
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock)
        self.resource = Ok()
        self.site = JMAPSite(self.resource, max_body=1000, name="t", access_log=False,
                             header_timeout=header_timeout, timers=self.wheel,
                             reactor=self.clock, timeout=idle)
        self.channel = self.site.buildProtocol(PEER)
        self.transport = AbortRecordingTransport(peerAddress=PEER)
        self.channel.makeConnection(self.transport)

    def trickle(self, data: bytes, every: float = 1.0) -> None:
        for i in range(len(data)):
            self.channel.dataReceived(data[i:i + 1])
            self.clock.advance(every)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def responses(self) -> list[bytes]:
        return self.transport.value().split(b"HTTP/1.1 ")[1:]


class AbortRecordingTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def test_headers_trickling_past_the_timeout_get_408_and_close() -> None:
    """One header byte a second (every byte restarts the idle timer) still closes the
    connection header-timeout after the request's first byte, with a 408 problem."""
    h = Harness(header_timeout=10)
    h.trickle(b"GET /ok HTTP/1.1\r\nHost: jmap.example\r\nX-Slow: ", every=1.0)
    assert h.clock.seconds() > 10.1
    assert h.closed
    wire = h.transport.value()
    assert wire.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close\r\n" in wire
    body = json.loads(wire.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == 408 and "10 s" in body["detail"]
    assert b"200" not in wire


def test_the_deadline_counts_from_the_first_byte_and_is_never_early() -> None:
    """Closed no earlier than header-timeout after the first byte, and at most one wheel
    tick later."""
    h = Harness(header_timeout=10)
    h.channel.dataReceived(b"G")
    h.clock.advance(9.99)
    h.channel.dataReceived(b"E")
    assert not h.closed
    h.clock.advance(0.11)
    assert h.closed


def test_headers_complete_in_time_are_served_and_the_timer_is_gone() -> None:
    """A request whose headers arrive within the timeout is answered; once they are
    complete the connection holds no deadline."""
    h = Harness(header_timeout=10)
    h.trickle(GET[:-2], every=0.2)
    assert h.channel.deadline is not None and h.channel.deadline.armed
    h.channel.dataReceived(b"\r\n")
    assert not h.channel.deadline.armed
    assert len(h.wheel) == 0
    h.clock.advance(30)
    assert not h.closed
    assert h.responses()[0].startswith(b"200 OK")


def test_an_idle_connection_owns_no_deadline() -> None:
    """Connected but silent, or between requests: no timer of ours (idle is free); the
    idle timeout is Twisted's own and still closes it."""
    h = Harness(header_timeout=10, idle=60)
    assert len(h.wheel) == 0
    h.channel.dataReceived(GET)
    assert len(h.wheel) == 0
    h.clock.advance(59)
    assert not h.closed
    h.clock.advance(2)
    assert h.closed  # the existing idle timeout
    assert b"408" not in h.transport.value()


def test_keep_alive_second_request_gets_its_own_clock() -> None:
    """After a served request and a quiet pause, the next request's clock starts at its
    own first byte: slow headers then close it header-timeout later."""
    h = Harness(header_timeout=10, idle=60)
    h.channel.dataReceived(GET)
    h.clock.advance(30)  # idle between requests: under the idle timeout only
    assert not h.closed
    h.channel.dataReceived(b"GET /ok HTTP/1.1\r\n")
    h.clock.advance(9.9)
    h.channel.dataReceived(b"Host: jmap.example\r\n")
    assert not h.closed
    h.clock.advance(0.2)
    assert h.closed
    first, second = h.responses()
    assert first.startswith(b"200 OK") and second.startswith(b"408 Request Timeout")


def test_a_second_request_in_time_is_served() -> None:
    """Two keep-alive requests, each within the timeout, are both answered."""
    h = Harness(header_timeout=10)
    h.channel.dataReceived(GET)
    h.clock.advance(5)
    h.trickle(GET, every=0.1)
    assert not h.closed
    assert [r[:6] for r in h.responses()] == [b"200 OK", b"200 OK"]


def test_a_pipelined_request_waits_for_its_turn_before_its_clock_runs() -> None:
    """A request buffered behind one still being answered is not timed while it waits:
    its clock starts when the channel reaches it."""
    h = Harness(header_timeout=10)
    h.channel.dataReceived(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\n")
    h.clock.advance(30)
    assert not h.closed and len(h.wheel) == 0
    held = h.resource.held.pop()
    held.write(b"done")
    held.finish()
    # Now the buffered, incomplete request is parsed and its deadline starts.
    assert h.channel.deadline is not None and h.channel.deadline.armed
    h.clock.advance(10.1)
    assert h.closed
    assert h.responses()[-1].startswith(b"408")


def test_a_trickling_body_is_closed_after_one_idle_timeout() -> None:
    """The body must arrive within the idle timeout as a whole, not per byte."""
    h = Harness(header_timeout=10, idle=20)
    h.channel.dataReceived(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    assert h.channel.deadline is not None and h.channel.deadline.phase is Phase.BODY
    h.trickle(b"x" * 19, every=1.0)
    assert not h.closed
    h.clock.advance(1.1)
    assert h.closed
    assert h.transport.value().startswith(b"HTTP/1.1 408")
    assert b"request body" in h.transport.value()


def test_a_body_in_time_is_served_and_cancels_its_deadline() -> None:
    h = Harness(header_timeout=10, idle=20)
    h.channel.dataReceived(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
    h.trickle(b"abc", every=5)
    assert len(h.wheel) == 0 and not h.closed
    assert h.responses()[0].startswith(b"200 OK")
    assert h.transport.value().endswith(b"got abc")


def test_header_timeout_zero_turns_the_head_deadline_off() -> None:
    """``header-timeout = 0``: slow headers are bounded by the idle timeout only."""
    h = Harness(header_timeout=0, idle=60)
    h.trickle(b"GET /ok HTTP/1.1\r\nHost: jmap.exa", every=1.0)
    assert not h.closed and len(h.wheel) == 0


def test_a_peer_that_does_not_take_the_408_is_aborted() -> None:
    """If the 408 cannot be flushed (the peer stops reading), the connection is aborted
    shortly after instead of lingering."""
    h = Harness(header_timeout=1)
    h.channel.dataReceived(b"GET")
    h.clock.advance(1.1)
    assert h.closed and not h.transport.aborted
    h.clock.advance(ABORT_GRACE_S + 0.1)
    assert h.transport.aborted


def test_connection_lost_cancels_every_timer() -> None:
    """A client that goes away mid-headers leaves no timer behind."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    h = Harness(header_timeout=10)
    h.channel.dataReceived(b"GET /ok HTTP/1.1\r\n")
    assert len(h.wheel) == 1
    h.channel.connectionLost(Failure(ConnectionDone()))
    assert len(h.wheel) == 0


def test_the_site_builds_jmap_channels_on_its_clock() -> None:
    """Every connection is a JMAPChannel whose idle timer runs on the site's reactor."""
    h = Harness()
    assert isinstance(h.channel, JMAPChannel)
    assert h.channel.clock is h.clock and h.channel.timeOut == 60


def test_request_deadline_alone() -> None:
    """The deadline object: one timer at a time, head then body, none after cancel."""
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[Phase] = []
    deadline = RequestDeadline(wheel, 2, 5, fired.append)
    deadline.head_started()
    deadline.head_started()
    assert len(wheel) == 1
    deadline.head_done(body_follows=True)
    assert len(wheel) == 1 and deadline.phase is Phase.BODY
    clock.advance(5.1)
    assert fired == [Phase.BODY] and not deadline.armed
    deadline.head_started()
    deadline.head_done(body_follows=False)
    assert len(wheel) == 0
    clock.advance(10)
    assert fired == [Phase.BODY]


def test_when_the_site_stops_idle_connections_close_and_busy_ones_after_their_request(
        ) -> None:
    """Stopping the site leaves no keep-alive connection (nor its idle timer) behind: an
    idle one closes at once, one with a request under way once it is answered."""
    idle, busy = Harness(), Harness()
    busy.site = idle.site
    busy.channel = idle.site.buildProtocol(PEER)
    busy.transport = AbortRecordingTransport(peerAddress=PEER)
    busy.channel.makeConnection(busy.transport)
    idle.channel.dataReceived(GET)
    busy.channel.dataReceived(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    idle.site.doStart()
    idle.site.doStop()
    assert idle.closed and not busy.closed
    held = idle.resource.held.pop()
    held.write(b"done")
    held.finish()
    assert busy.closed and busy.transport.value().endswith(b"done\r\n0\r\n\r\n")
