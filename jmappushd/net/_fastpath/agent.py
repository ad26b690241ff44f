"""twisted.web's client (the Web Push POSTs): what ``Agent.request`` derives from a URL,
kept per URL, and the request's ``Headers`` filled directly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.web._newclient import _ensureValidURI
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse

from jmappushd.net.bytesbody import BytesProducer

AGENT_PLAN = all(hasattr(Agent, a)
                 for a in ("_requestWithEndpoint", "_getEndpoint", "_computeHostValue"))
"""A POST to a URL seen before may skip what ``Agent.request`` derives from the URL again:
its parsed URI, pool key, endpoint and ``Host`` value are kept (:class:`AgentPlan`)."""


RAW_HEADERS = "_rawHeaders" in getattr(Headers, "__slots__", ())
"""``Headers`` may be filled with already canonical, already checked names and values."""


def headers_from(raw: dict[bytes, list[bytes]]) -> Headers:
    """``Headers`` holding ``raw`` (canonical names, checked ASCII values) as given.

    Reproduces ``Headers(raw)`` without its per-name and per-value re-encoding.
    """
    if RAW_HEADERS:
        built = Headers()
        built._rawHeaders = raw
        return built
    return Headers(raw)


@dataclass(frozen=True, slots=True)
class AgentPlan:
    """What ``Agent.request`` works out from one URL before it asks the pool for a
    connection; the same for every POST to that URL through ``agent``."""

    agent: Agent
    key: tuple[bytes, bytes, int]
    endpoint: IStreamClientEndpoint
    uri: URI
    path: bytes
    host: bytes
    """The ``Host`` header value ``Agent`` would add (the caller sends it)."""


def agent_plan(agent: IAgent, uri: bytes) -> AgentPlan | None:
    """``Agent.request``'s steps up to the connection, once, or ``None`` for ``agent.request``.

    Reproduces ``Agent.request``: the URI checked and parsed, the endpoint from the
    agent's endpoint factory (the SSRF-guarded one resolves and checks at each connect,
    not here), the pool key, the request path and the ``Host`` value. Only for an
    ``Agent`` itself (a subclass or another ``IAgent`` may do otherwise). Raises what
    ``Agent.request`` raises for a URI it refuses.
    """
    if not AGENT_PLAN or type(agent) is not Agent:
        return None
    parsed = URI.fromBytes(_ensureValidURI(uri.strip()))
    return AgentPlan(agent, (parsed.scheme, parsed.host, parsed.port), agent._getEndpoint(parsed),
                     parsed, parsed.originForm,
                     agent._computeHostValue(parsed.scheme, parsed.host, parsed.port))


def agent_request(plan: AgentPlan, method: bytes, headers: Headers,
                  body: IBodyProducer | None) -> Deferred[IResponse]:
    """``plan.agent.request`` for the planned URL; ``headers`` carry ``Host: plan.host``
    last, as ``Agent`` would add it (so the headers are not copied to add it)."""
    return plan.agent._requestWithEndpoint(plan.key, plan.endpoint, method, plan.uri,
                                           headers, body, plan.path)


_PROBE_URIS = (b"https://push.example/wpush/v2/AbC-d_e", b"http://push.example:8080/a;p?q=1#f",
               b"https://[2001:db8::1]:8443/x", b"https://[2001:db8::2]/", b" http://h/ ")


def probe_agent_plan() -> bool:
    """For each URI, a planned POST puts on the wire the bytes ``Agent.request`` puts there,
    over an endpoint made from the same URI, and gets the same answer."""
    for uri in _PROBE_URIS:
        public, planned = _PlanAgent.make(), _PlanAgent.make()
        plan = agent_plan(planned[0], uri)
        if plan is None:
            return False
        # A fixed header first: the planned POST carries Host last, as Agent adds it.
        fixed = {b"Content-Encoding": [b"aes128gcm"]}
        answers = [public[0].request(b"POST", uri, Headers(fixed), BytesProducer(b"sealed")),
                   agent_request(plan, b"POST", Headers(
                       fixed | {b"Host": [plan.host]}), BytesProducer(b"sealed"))]
        wires = [side[1].answer() for side in (public, planned)]
        codes = [getattr(d.result, "code", None) if IResponse.providedBy(d.result) else None
                 for d in answers]
        for answer in answers:
            answer.addErrback(lambda _: None)  # a failed probe is its answer, not an error
        if wires[0] != wires[1] or codes != [201, 201] or public[1].uris != planned[1].uris:
            return False
    return True


class _PlanAgent:
    """An endpoint factory for the probe: it records each URI it is asked for and
    connects an ``HTTP11ClientProtocol`` to a ``StringTransport`` at once."""

    def __init__(self) -> None:
        self.uris: list[bytes] = []
        self.protocols: list[Any] = []

    @classmethod
    def make(cls) -> tuple[Agent, _PlanAgent]:
        clock = task.Clock()
        factory = cls()
        return Agent.usingEndpointFactory(clock, factory, HTTPConnectionPool(clock)), factory

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        self.uris.append(uri.toBytes())
        return self  # type: ignore[return-value]

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        protocol = protocol_factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)

    def answer(self) -> bytes:
        """What the one connection was sent; then the service's 201 to it."""
        (protocol,) = self.protocols
        wire: bytes = protocol.transport.value()
        protocol.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        return wire


def probe_headers() -> bool:
    """Filled directly, ``Headers`` equals the public constructor's and answers lookups."""
    if "_rawHeaders" not in getattr(Headers, "__slots__", ()):
        return False
    raw = {b"Content-Encoding": [b"aes128gcm"], b"Ttl": [b"60"]}
    built = headers_from(dict(raw))
    return (built == Headers(raw)
            and built.getRawHeaders(b"ttl") == [b"60"]
            and sorted(built.getAllRawHeaders()) == sorted(raw.items()))
