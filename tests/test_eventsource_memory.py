"""What an idle EventSource stream holds (issue 16): the memory cuts keep behaviour.

Each cut measured in docs/benchmarks.rst ("EventSource memory per idle stream") has a
test here pinning what it must keep: the request's slotted attributes read exactly as
twisted.web's own Request's do, before and after a response; an idle stream's request
keeps its attributes inline however many kinds of request the site served before (the
cut itself, which fails without the slots); the slow-request deadline, now a bound
method instead of a closure, still names each phase's own limit.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.net.timerwheel import TimerWheel
from jmappushd.web.site import _SLOTTED_DEFAULTS, JMAPSite, LimitedRequest

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
MISSING = object()

# Every attribute twisted.web's Request and its methods may set on an instance
# (Twisted 26.10): what the requests of one site may add to the names its class shares.
TWISTED_NAMES = (
    "_disconnected", "_encoder", "_forceSSL", "_inFakeHead", "_parsePOSTFormSubmission",
    "appRootURL", "args", "channel", "chunked", "client", "clientproto", "code",
    "code_message", "content", "cookies", "etag", "finished", "host", "lastModified",
    "method", "notifications", "password", "path", "postpath", "prepath", "producer",
    "queued", "received_cookies", "requestHeaders", "responseHeaders", "sentLength",
    "site", "startedWriting", "streamingProducer", "transport", "uri", "user", "write",
    "sitepath", "_adapterCache", "defaultContentType",
)


class Streams(Resource):
    """``GET /hold`` is held open like an idle EventSource stream; anything else is
    answered (401 with a body, as an unauthenticated API call)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        if request.path == b"/hold":
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.write(b": open\n\n")
            request.registerProducer(_Producer(), True)
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(401)
        request.setETag(b"x")
        request.setLastModified(1)
        request.getUser()
        return b"no"


class _Producer:
    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


def make_site(idle: float = 60, header_timeout: float = 10) -> tuple[JMAPSite, Streams, Clock]:
    clock = Clock()
    resource = Streams()
    site = JMAPSite(resource, max_body=1000, name="t", access_log=False,
                    header_timeout=header_timeout, timers=TimerWheel(clock), reactor=clock,
                    timeout=idle)
    return site, resource, clock


def connect(site: JMAPSite, data: bytes) -> StringTransport:
    channel = site.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport


# -- the slots read as twisted.web's attributes ----------------------------------------------


@pytest.mark.parametrize("name", sorted(_SLOTTED_DEFAULTS))
def test_slotted_attributes_start_as_twisteds_own(name: str) -> None:
    """A fresh request reads (or lacks) each slotted attribute exactly as Twisted's own
    Request does: the same default, or AttributeError for those without one."""
    ours = LimitedRequest(DummyChannel())
    theirs = Request(DummyChannel())
    assert getattr(ours, name, MISSING) == getattr(theirs, name, MISSING)
    assert hasattr(ours, name) == hasattr(theirs, name)


def test_a_finished_request_reads_as_twisteds_own() -> None:
    """Status, credentials, ETag and end of response land where Twisted reads them, and
    what Twisted deletes at the end (channel, content) falls back to its default."""
    site, _, _ = make_site()
    transport = connect(site, b"GET /api HTTP/1.1\r\nHost: x\r\n"
                              b"Authorization: Basic dTpw\r\n\r\n")
    wire = transport.value()
    assert wire.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"ETag: x\r\n" in wire and b"Last-Modified: " in wire and wire.endswith(b"no")
    request = LimitedRequest(DummyChannel())
    request.setResponseCode(404)
    request.getUser()
    assert (request.code, request.code_message, request.user, request.password) == (
        404, b"Not Found", b"", b"")
    assert "code" not in vars(request) and "user" not in vars(request)


# -- the cut: an idle stream's request keeps its attributes inline ----------------------------


def _dict_bytes(request: Request) -> int:
    return sys.getsizeof(vars(request))


def _fill_name_table(request_class: type[Request]) -> None:
    """Set every name Twisted may set on one request of the class (the site's other
    kinds of request: API calls, HEAD, conditional GETs, Basic, disconnects)."""
    other = request_class(DummyChannel())
    for name in TWISTED_NAMES:
        if name != "write":
            setattr(other, name, getattr(other, name, None))
    other.write = lambda data: None  # type: ignore[method-assign]


@pytest.mark.skipif(sys.implementation.name != "cpython",
                    reason="inline attribute values are CPython's key-sharing dicts")
def test_idle_stream_requests_stay_small_whatever_the_site_served_before() -> None:
    """After the site's request class has seen every attribute name Twisted sets, a held
    stream's request still shares the class's name table (a small dict) instead of a
    dict of its own (0.8-1.6 KiB); a plain Request subclass under the same history does
    get one (so this test measures what it claims)."""
    site, resource, _ = make_site()
    _fill_name_table(site.requestFactory)
    for _ in range(3):
        connect(site, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    ours = max(_dict_bytes(r) for r in resource.held)

    class Plain(Request):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.started = 0.0
            self._received = 0
            self._refused = False

    _fill_name_table(Plain)
    plain = Plain(DummyChannel())
    for name in ("method", "uri", "path", "args", "clientproto", "prepath", "postpath",
                 "site", "sitepath", "code", "code_message", "startedWriting", "chunked",
                 "sentLength", "producer", "streamingProducer"):
        setattr(plain, name, getattr(plain, name, None))
    # Measured on CPython 3.11: 272 bytes (22 names, shared) against 832 (31, its own).
    assert _dict_bytes(plain) > 2 * ours
    assert ours < 400, ours


# -- the deadline's bound method names each phase's limit --------------------------------------


def test_the_head_deadline_names_the_header_timeout() -> None:
    """A request whose headers are late gets the 408 naming header-timeout."""
    site, _, clock = make_site(idle=20, header_timeout=5)
    transport = connect(site, b"GET /x HTTP/1.1\r\nHost: x\r\n")
    clock.advance(5.2)
    wire = transport.value()
    assert wire.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert "5 s" in json.loads(wire.split(b"\r\n\r\n", 1)[1])["detail"]


def test_the_body_deadline_names_the_idle_timeout() -> None:
    """A body still incomplete one idle timeout after its headers gets the 408 naming
    that timeout, not the header one."""
    site, _, clock = make_site(idle=20, header_timeout=5)
    transport = connect(site, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab")
    clock.advance(20.2)
    wire = transport.value()
    assert wire.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    detail = json.loads(wire.split(b"\r\n\r\n", 1)[1])["detail"]
    assert "body" in detail and "20 s" in detail
