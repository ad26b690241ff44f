"""The channel asks the socket for its local address once (issue 16, the HTTP API path).

twisted.web's ``Request`` asks its channel for the local address on every request,
each time a ``getsockname()`` system call on a plain TCP connection. A connected
socket's local address never changes, so ``JMAPChannel`` keeps the first answer: each
request of a keep-alive connection still sees the transport's own address, the
transport is asked once, and the kept address costs an idle stream no memory.
"""

from __future__ import annotations

import sys

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

from jmappushd.net.timerwheel import TimerWheel
from jmappushd.web.site import JMAPChannel, JMAPSite

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
LOCAL = IPv4Address("TCP", "198.51.100.1", 8080)
REQUEST = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


class Hosts(Resource):
    """Answers every request and remembers the local address it was given."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def render_GET(self, request: Request) -> bytes:
        self.seen.append(request.getHost())
        return b"ok"


class Counting(StringTransport):
    """A transport that counts how often it is asked for its local address."""

    asked = 0

    def getHost(self) -> IPv4Address:
        self.asked += 1
        return LOCAL


def serve(requests: int) -> tuple[JMAPChannel, Counting, Hosts]:
    resource = Hosts()
    clock = Clock()
    site = JMAPSite(resource, max_body=1000, name="t", access_log=False, header_timeout=10,
                    timers=TimerWheel(clock), reactor=clock, timeout=60)
    channel = site.buildProtocol(PEER)
    transport = Counting(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(REQUEST * requests)
    return channel, transport, resource


def test_every_request_sees_the_local_address_asked_once() -> None:
    """Three requests on one connection: each answered, each given the transport's own
    address, the transport asked for it once."""
    _, transport, resource = serve(3)
    assert transport.value().count(b"HTTP/1.1 200 OK\r\n") == 3
    assert resource.seen == [LOCAL] * 3
    assert transport.asked == 1


def uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twisted's own getHost: asks the transport every time."""
    monkeypatch.setattr(JMAPChannel, "getHost", http.HTTPChannel.getHost)


def test_twisteds_channel_asks_on_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the kept address the same connection asks three times (so the test above
    measures what it claims)."""
    uncached(monkeypatch)
    _, transport, _ = serve(3)
    assert transport.asked == 3


def test_the_kept_address_costs_a_connection_no_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The channel's attribute dict is no larger for the kept address than the same
    channel's without it (it fits the table every connection already has)."""
    kept, _, _ = serve(1)
    uncached(monkeypatch)
    plain, _, _ = serve(1)
    assert "_host" in vars(kept) and "_host" not in vars(plain)
    assert sys.getsizeof(vars(kept)) <= sys.getsizeof(vars(plain))
