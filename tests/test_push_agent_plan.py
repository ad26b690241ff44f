"""The agent-plan fast path (issue 16, Web Push deliveries): a POST to a URL seen before
skips what ``Agent.request`` derives from the URL again, and puts on the wire exactly
the bytes ``Agent.request`` puts there.

In memory: an ``Agent`` over an endpoint factory whose endpoints connect the HTTP/1.1
client protocol to a ``StringTransport`` at once, answered 201 by hand. The SSRF side
(each new connection still resolved and checked) is in tests/test_push_ssrf.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from zope.interface import implementer

from jmappushd.net import _fastpath
from jmappushd.transports.webpush.sender import AgentTransport, PushResponse

HEADERS = {"Content-Type": "application/json", "TTL": "86400", "Urgency": "normal",
           "Authorization": "vapid t=eyJ0eXAiOiJKV1QifQ.e30.c2ln, k=BKey",
           "Topic": "S1-topic", "Content-Encoding": "aes128gcm"}
BODY = b"\x00" * 16 + b"encrypted body"
URLS = ["https://push.example.net/wpush/v2/gAAAAABkZ7Q0abc-_~",
        "https://b\u00fccher.example:8443/p/\u00e4?x=\u00fc&y=1",
        "http://127.0.0.1:8080/push/subscription-1",
        "https://push.example.net:443/a;b?c#fragment"]


@pytest.fixture(autouse=True)
def rechecked() -> Iterator[None]:
    """Every test leaves the flags as the installed libraries set them."""
    yield
    assert _fastpath.check() == []


@implementer(IAgentEndpointFactory, IStreamClientEndpoint)
class Wire:
    """Endpoints for every URI: each connect is a new client protocol on a StringTransport."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []
        self.protocols: list[Any] = []

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        self.asked.append(uri.toBytes())
        return self

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        protocol = protocolFactory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)

    def answer(self, extra: bytes = b"") -> bytes:
        """The newest connection's request bytes; then a 201 to it."""
        protocol = self.protocols[-1]
        sent: bytes = protocol.transport.value()
        protocol.transport.clear()
        protocol.dataReceived(b"HTTP/1.1 201 Created\r\n" + extra + b"Content-Length: 0\r\n\r\n")
        return sent


def transport(persistent: bool = True) -> tuple[AgentTransport, Wire]:
    clock, wire = Clock(), Wire()
    agent = Agent.usingEndpointFactory(clock, wire, HTTPConnectionPool(clock, persistent))
    return AgentTransport(agent, clock, 10.0), wire


def posted(post: AgentTransport, wire: Wire, url: str) -> tuple[bytes, PushResponse]:
    got: list[PushResponse] = []
    post.post(url, BODY, HEADERS).addCallback(got.append)
    sent = wire.answer(b"Retry-After: 7\r\n")
    (response,) = got
    return sent, response


@pytest.mark.parametrize("url", URLS)
def test_a_planned_post_sends_agent_requests_bytes(url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """WP-1..WP-4, C-WP-2: request line, headers (Host last, where Agent adds it) and
    body are byte for byte what ``Agent.request`` sends, the first time and when the
    plan is reused; the answer is read alike."""
    planned, planned_wire = transport()
    first, answer = posted(planned, planned_wire, url)
    again, _ = posted(planned, planned_wire, url)
    monkeypatch.setattr(_fastpath.agent, "AGENT_PLAN", False)
    public, public_wire = transport()
    theirs, their_answer = posted(public, public_wire, url)
    assert first == again == theirs
    assert answer == their_answer == PushResponse(201, "7")
    assert planned_wire.asked == public_wire.asked  # the same endpoint was asked for


def test_the_url_is_worked_out_once() -> None:
    """Three POSTs to one URL ask the endpoint factory once (``Agent.request`` asks it
    every time); without a kept connection each POST still connects anew."""
    post, wire = transport(persistent=False)
    for _ in range(3):
        posted(post, wire, URLS[0])
    assert wire.asked == [b"https://push.example.net/wpush/v2/gAAAAABkZ7Q0abc-_~"]
    assert len(wire.protocols) == 3


def test_the_plans_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most ``max_plans`` URLs are kept; a full memory starts again."""
    monkeypatch.setattr(AgentTransport, "max_plans", 2)
    post, wire = transport()
    for url in URLS[:3]:
        posted(post, wire, url)
        assert len(post._plans) <= 2
    assert len(post._plans) == 1


def test_a_url_that_cannot_be_requested_is_not_kept() -> None:
    """A URL refused on the way to the request URI (treq refuses an IPv6 literal host)
    fails the POST as before the plan, and is not kept."""
    post, wire = transport()
    failures: list[Any] = []
    post.post("https://[::1]/push", BODY, HEADERS).addErrback(failures.append)
    assert failures and failures[0].check(ValueError)
    assert post._plans == {} and wire.protocols == []


def test_only_an_agent_itself_is_planned() -> None:
    """Another ``IAgent`` (treq's test agent) or a subclass of ``Agent`` may derive
    otherwise: it is called through ``request``."""
    clock, wire = Clock(), Wire()

    class Own(Agent):
        pass

    assert _fastpath.agent_plan(RequestTraversalAgent(Resource()), b"https://h/") is None
    assert _fastpath.agent_plan(Own.usingEndpointFactory(clock, wire), b"https://h/") is None
    assert _fastpath.agent_plan(Agent.usingEndpointFactory(clock, wire), b"https://h/")


def test_a_changed_agent_switches_the_plan_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``Agent.request`` that does more than the plan reproduces (here: a header of
    its own) fails the start-up probe: off, and a POST goes through ``Agent.request``
    again, with that Agent's own bytes."""
    request = Agent.request

    def more(self: Agent, method: bytes, uri: bytes, headers: Any = None,
             bodyProducer: Any = None) -> Any:
        headers.addRawHeader(b"X-Agent", b"2")
        return request(self, method, uri, headers, bodyProducer)

    monkeypatch.setattr(Agent, "request", more)
    assert _fastpath.check() == ["agent-plan"]
    post, wire = transport()
    sent, response = posted(post, wire, URLS[0])
    assert b"\r\nX-Agent: 2\r\n" in sent and response.code == 201
    monkeypatch.undo()
