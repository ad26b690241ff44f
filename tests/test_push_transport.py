"""The Web Push transport: one Agent POST that sends what treq would, minus what a push
does not need (issue 16: deliveries per second).

``AgentTransport`` calls the agent itself instead of treq's ``HTTPClient.request``; these
tests pin that the request on the wire is treq's (method, URI, headers, body), that no
cookie a push service sets is ever sent back, and that ``push-timeout`` still bounds the
whole exchange, head and body, on the injected clock.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from jmappushd.net.bytesbody import BytesProducer
from jmappushd.transports.webpush.sender import (
    AgentTransport,
    PushResponse,
    request_headers,
    request_uri,
)

HEADERS = {"Content-Type": "application/json", "TTL": "86400", "Urgency": "normal",
           "Authorization": "vapid t=eyJ0eXAiOiJKV1QifQ.e30.c2ln, k=BKey",
           "Topic": "S1-topic", "Content-Encoding": "aes128gcm"}
BODY = b"\x00" * 16 + b"encrypted body"


class Recorder(Resource):
    """A push service: records every request and answers 201, optionally with headers."""

    isLeaf = True

    def __init__(self, answer_headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, list[tuple[bytes, Sequence[bytes]]], bytes]] = []
        self.answer_headers = answer_headers or {}

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None and request.uri is not None
        headers = sorted((name.lower(), values)
                         for name, values in request.requestHeaders.getAllRawHeaders())
        self.seen.append((request.method, request.uri, headers, request.content.read()))
        request.setResponseCode(201)
        for name, value in self.answer_headers.items():
            request.responseHeaders.addRawHeader(name, value)
        return b""


@pytest.mark.parametrize("url", [
    "https://push.example.net/wpush/v2/gAAAAABkZ7Q0abc-_~",
    "https://b\u00fccher.example:8443/p/\u00e4?x=\u00fc&y=1",
    "http://127.0.0.1:8080/push/subscription-1",
])
def test_request_uri_is_the_uri_treq_sends(url: str) -> None:
    """The URI computed once per URL is the one treq's request computes every time."""
    ours = request_uri(url)
    assert ours == _treq_uri(url)
    assert request_uri(url) is ours  # remembered


def test_a_url_treq_refuses_is_refused_alike() -> None:
    """treq's IDNA step refuses an IPv6 literal host; so does ``request_uri`` (the
    Sender counts it as an ``error`` outcome, as before)."""
    url = "https://[2001:db8::1]:8443/push/s1"
    with pytest.raises(ValueError) as treq_error:
        _treq_uri(url)
    with pytest.raises(ValueError) as ours:
        request_uri(url)
    assert type(ours.value) is type(treq_error.value)


def _treq_uri(url: str) -> bytes:
    seen: list[bytes] = []

    @implementer(IAgent)
    class Capture:
        def request(self, method: bytes, uri: bytes, headers: object = None,
                    bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
            seen.append(uri)
            return Deferred()

    HTTPClient(Capture()).request("POST", url, data=b"x", allow_redirects=False)
    return seen[0]


async def _treq_post(agent: IAgent, url: str) -> None:
    """The request as the transport made it through treq before issue 16."""
    client = HTTPClient(agent, data_to_body_producer=BytesProducer)
    response = await client.request("POST", url, data=BODY, headers=request_headers(HEADERS),
                                    allow_redirects=False, unbuffered=True)
    await response.content()


def test_the_post_is_treqs_without_accept_encoding() -> None:
    """Same method, URI, headers and body as treq's, but for the ``Accept-Encoding:
    gzip`` treq's decoder adds (the answer's body is read only to be discarded)."""
    url = "https://push.example.net/wpush/v2/abc"
    root = Recorder()
    agent = RequestTraversalAgent(root)
    treq_done = defer.ensureDeferred(_treq_post(agent, url))
    agent.flush()
    assert treq_done.called
    ours = AgentTransport(agent, Clock(), 30).post(url, BODY, HEADERS)
    agent.flush()
    assert _result(ours) == PushResponse(201, None)
    treq_request, our_request = root.seen
    method, uri, headers, body = treq_request
    without = [(name, values) for name, values in headers if name != b"accept-encoding"]
    assert without != headers  # treq did send it
    assert our_request == (method, uri, without, body)
    assert body == BODY


def test_a_cookie_from_the_push_service_is_never_sent_back() -> None:
    """A push service's Set-Cookie is not kept: the next POST carries no Cookie (treq's
    client kept them in one jar for all push services, growing with every cookie)."""
    url = "https://push.example.net/wpush/v2/abc"
    root = Recorder({b"Set-Cookie": b"session=abc; Path=/", b"Retry-After": b"30"})
    agent = RequestTraversalAgent(root)
    transport = AgentTransport(agent, Clock(), 30)
    for _ in range(2):
        d = transport.post(url, BODY, HEADERS)
        agent.flush()
        assert _result(d) == PushResponse(201, "30")
    assert all(name != b"cookie" for _, _, headers, _ in root.seen for name, _ in headers)


def _result(d: Deferred[PushResponse]) -> PushResponse:
    got: list[PushResponse] = []
    d.addCallback(got.append)
    assert got, "the POST has not finished"
    return got[0]


@implementer(IAgent)
class Stalling:
    """An agent whose answer never comes (``body=False``) or whose body never ends."""

    def __init__(self, body: bool) -> None:
        self.body = body
        self.cancelled: list[str] = []

    def request(self, method: bytes, uri: bytes, headers: object = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        if not self.body:
            return Deferred(lambda _: self.cancelled.append("head"))
        return defer.succeed(StalledResponse(self.cancelled))  # type: ignore[arg-type]


class StalledResponse:
    code = 201
    length = 10

    def __init__(self, cancelled: list[str]) -> None:
        from twisted.web.http_headers import Headers
        self.headers = Headers()
        self._cancelled = cancelled

    def deliverBody(self, protocol: object) -> None:
        """Never delivers; treq.collect's Deferred is cancelled by the timeout."""


@pytest.mark.parametrize("stall_in_body", [False, True])
def test_push_timeout_bounds_the_head_and_the_body(stall_in_body: bool) -> None:
    """Without treq's own timer the transport's one still fails a POST whose answer, or
    whose body, does not come within ``push-timeout`` on the injected clock."""
    clock = Clock()
    agent = Stalling(stall_in_body)
    d = AgentTransport(agent, clock, 5).post("https://push.example/p", BODY, HEADERS)
    failures: list[object] = []
    d.addErrback(failures.append)
    clock.advance(4.9)
    assert not failures
    clock.advance(0.2)
    assert len(failures) == 1
    assert failures[0].check(defer.TimeoutError)  # type: ignore[attr-defined]
    assert agent.cancelled == ([] if stall_in_body else ["head"])
    assert clock.getDelayedCalls() == []
