"""One Web Push POST: headers, encryption, VAPID, and the HTTP client it goes through.

:class:`Sender` turns a body for a subscription into a request (WP-1..WP-4, ENC-1,
VAPID-12) and the answer into an :class:`~jmappushd.transports.webpush.policy.Outcome`. The HTTP
side is a small :class:`PushTransport` so tests can hand out Deferreds they fire
themselves; :class:`AgentTransport` is the real one: a twisted.web ``Agent`` over one
persistent pool and the SSRF-guarded endpoint factory, no redirects followed, every
request bounded by ``push-timeout`` on the injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import treq
from cryptography.hazmat.primitives.asymmetric import ec
from hyperlink import EncodedURL
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHostnameResolver, IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IPolicyForHTTPS

from jmappushd.config import PushConfig
from jmappushd.metrics import Metrics
from jmappushd.net import _fastpath
from jmappushd.net._fastpath import AgentPlan, headers_from
from jmappushd.net.bytesbody import BytesProducer
from jmappushd.reactor import IDaemonReactor
from jmappushd.transports.webpush import ece
from jmappushd.transports.webpush.keys import KeyRing
from jmappushd.transports.webpush.policy import Outcome, classify, retry_after
from jmappushd.transports.webpush.ssrf import ForbiddenAddress, GuardedEndpointFactory

__all__ = ["AgentTransport", "PushResponse", "PushTarget", "PushTransport",
           "Sender", "build_agent", "request_uri"]

MAX_RESPONSE_BODY = 65_536  # a push service answers with (almost) nothing


@dataclass(frozen=True, slots=True)
class PushResponse:
    """What matters of a push service's answer."""

    code: int
    retry_after: str | None = None


class PushTransport(Protocol):
    """POSTs a body and fires with the response (or fails: timeout, network, SSRF)."""

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Deferred[PushResponse]: ...


class PushTarget(Protocol):
    """The parts of a subscription a POST needs."""

    id: str
    url: str
    key_id: str
    keys: tuple[ec.EllipticCurvePublicKey, bytes, bytes] | None


def build_agent(
    reactor: IDaemonReactor, allow_private: bool, connect_timeout: float,
    tls_policy: IPolicyForHTTPS | None = None, resolver: IHostnameResolver | None = None,
    *, keep_per_host: int,
) -> tuple[IAgent, HTTPConnectionPool]:
    """One agent over one persistent pool, checking addresses at connect (PS-18).

    ``keep_per_host`` is how many idle connections to one push service stay open: the
    per-origin in-flight cap, so every POST the slots let start finds a connection
    when the one before it on that slot is answered. Fewer (the pool's default is two;
    this was 16 under a cap of 32) closes the surplus after each answer and opens it
    again for the next POST: a TCP and TLS handshake each time under load (study 17).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = keep_per_host
    factory = GuardedEndpointFactory(reactor, allow_private, tls_policy, connect_timeout,
                                     resolver=resolver)
    return Agent.usingEndpointFactory(reactor, factory, pool=pool), pool


class _Discard:
    """Reads and forgets a response body, refusing an absurdly long one."""

    def __init__(self) -> None:
        self.size = 0

    def __call__(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_RESPONSE_BODY:
            raise ValueError("push service response body too long")


# One request URI per subscription URL, as treq would send it; bounded.
_URIS: dict[str, bytes] = {}
_MAX_URIS = 4096


def request_uri(url: str) -> bytes:
    """The request URI treq sends for ``url`` (IDNA host, percent-encoded path), once.

    treq parses and IDNA-encodes the URL on every request, the largest cost of a POST
    after the cryptography; a subscription's URL never changes.
    """
    uri = _URIS.get(url)
    if uri is None:
        uri = EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
        if len(_URIS) >= _MAX_URIS:
            _URIS.clear()
        _URIS[url] = uri
    return uri


class AgentTransport:
    """The real transport: one ``Agent`` POST, no redirects (C-WP-2), no cookies, the
    whole exchange bounded by ``push-timeout`` on ``clock``.

    It calls the agent as treq does but without what a push needs none of, per request:
    treq's URL parsing (see :func:`request_uri`), its cookie jar (a push service's
    cookies would only grow it), its gzip decoder (the body is discarded) and its own
    timer (the one here covers the head and the body). What ``Agent.request`` itself
    derives from a URL (the parsed URI, the pool key, the endpoint, the ``Host`` value)
    is kept per URL too (:func:`~jmappushd.net._fastpath.agent_plan`); each new
    connection still resolves and checks its addresses (PS-18).
    """

    max_plans = 4096

    def __init__(self, agent: IAgent, clock: IReactorTime, timeout: float) -> None:
        self._agent = agent
        self._clock = clock
        self._timeout = timeout
        self._plans: dict[str, AgentPlan] = {}

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Deferred[PushResponse]:
        request = Deferred.fromCoroutine(self._post(url, body, headers))
        request.addTimeout(self._timeout, self._clock)

        cancelled = False

        def cancel(_: object) -> None:
            nonlocal cancelled
            cancelled = True
            request.cancel()

        def forward(outcome: Any) -> None:
            if not cancelled:  # else the caller cancelled: the outcome is moot
                result.callback(outcome)

        # Cancelling the result (shutdown, destroy) fails it with CancelledError, whatever
        # the request then reports, so cancellation is never mistaken for a timeout.
        result: Deferred[PushResponse] = Deferred(cancel)
        request.addBoth(forward)
        return result

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> PushResponse:
        plan = self._plans.get(url)
        if plan is None:
            plan = _fastpath.agent_plan(self._agent, request_uri(url))
            if plan is not None:
                if len(self._plans) >= self.max_plans:
                    self._plans.clear()
                self._plans[url] = plan
        if plan is not None and _fastpath.agent.AGENT_PLAN:
            response = await _fastpath.agent_request(
                plan, b"POST", request_headers(headers, plan.host), BytesProducer(body))
        else:
            response = await self._agent.request(b"POST", request_uri(url),
                                                 request_headers(headers), BytesProducer(body))
        if response.length is not UNKNOWN_LENGTH and response.length > MAX_RESPONSE_BODY:
            raise ValueError("push service response body too long")
        await treq.collect(response, _Discard())
        values = response.headers.getRawHeaders("retry-after")
        return PushResponse(int(response.code), values[0] if values else None)


_CANONICAL: dict[str, bytes] = {}
# Values repeat: the constant headers, one VAPID header per push service for hours,
# one Topic per subscription. Checked and encoded once; bounded.
_ENCODED: dict[str, bytes] = {}
_MAX_ENCODED = 4096


def request_headers(headers: dict[str, str], host: bytes | None = None) -> Headers:
    """twisted.web ``Headers`` for the request ``Sender.headers`` built, and ``host`` last
    as ``Host`` (where ``Agent`` puts the one it adds) when given.

    ``Headers`` re-encodes every name and rewrites every value's line breaks, a third
    of the cost of a push after the cryptography. Every value here is our own ASCII
    (digits, tokens, base64url; the urgency is checked at start-up): a C-level check
    refuses control characters (and ``encode`` anything not ASCII) the first time a
    value is seen, and the canonical name form is looked up once per name through the
    public API.
    """
    raw: dict[bytes, list[bytes]] = {}
    for name, value in headers.items():
        encoded = _ENCODED.get(value)
        if encoded is None:
            if not value.isprintable():  # no CR, LF, NUL or other control character
                raise ValueError(f"header {name} has a control character")
            encoded = value.encode("ascii")
            if len(_ENCODED) >= _MAX_ENCODED:
                _ENCODED.clear()
            _ENCODED[value] = encoded
        canonical = _CANONICAL.get(name)
        if canonical is None:
            ((canonical, _),) = Headers({name: [value]}).getAllRawHeaders()
            _CANONICAL[name] = canonical
        raw[canonical] = [encoded]
    if host is not None:
        raw[b"Host"] = [host]
    return headers_from(raw)


@dataclass(frozen=True, slots=True)
class Result:
    """A POST's outcome and the delay the service asked for, if any."""

    outcome: Outcome
    retry_after: float | None = None
    status: int | None = None


class Sender:
    """Builds and sends one push; never raises (but for cancellation), every failure
    becomes a :class:`Result`."""

    log = Logger()

    def __init__(self, transport: PushTransport, keyring: KeyRing, clock: IReactorTime,
                 config: PushConfig, metrics: Metrics) -> None:
        self._transport = transport
        self._keyring = keyring
        self._clock = clock
        self._fixed_headers = {"Content-Type": "application/json", "TTL": str(config.ttl),
                               "Urgency": config.urgency}
        self._metrics = metrics

    def headers(self, target: PushTarget, topic: str | None) -> dict[str, str] | None:
        """The request headers (WP-1..WP-4, ENC-1, VAPID-12); None if its key is gone."""
        signer = self._keyring.signer(target.key_id)
        if signer is None:
            return None
        headers = self._fixed_headers.copy()
        headers["Authorization"] = signer.authorization(target.url)
        if topic is not None:
            headers["Topic"] = topic
        if target.keys is not None:
            headers["Content-Encoding"] = "aes128gcm"
        return headers

    async def send(self, target: PushTarget, body: bytes, kind: str,
                   topic: str | None = None) -> Result:
        """POST ``body`` (encrypted when the subscription has keys) and judge the answer.

        Any exception but cancellation, wherever it arises (headers, encryption, the
        transport, reading the answer), is a counted ``error`` outcome: a caller that
        trusts "never raises" must never be left holding a half-done attempt.
        """
        try:
            return await self._send(target, body, kind, topic)
        except CancelledError:
            raise  # shutdown or destroy: not an outcome
        except Exception:
            self.log.failure("push to subscription {sub_id} failed unexpectedly",
                             sub_id=target.id)
            return self._count(kind, Result(Outcome.FAILED), "error")

    async def _send(self, target: PushTarget, body: bytes, kind: str,
                    topic: str | None) -> Result:
        headers = self.headers(target, topic)
        if headers is None:
            self.log.warn("subscription {sub_id}: its VAPID key is gone", sub_id=target.id)
            return self._count(kind, Result(Outcome.GONE))
        if target.keys is not None:
            public, raw, auth = target.keys
            body = ece.encrypt(body, raw, auth, ua_public_key=public)
        started = self._clock.seconds()
        try:
            response = await self._transport.post(target.url, body, headers)
        except CancelledError:
            raise
        except ForbiddenAddress as exc:
            self.log.warn("subscription {sub_id}: {reason}", sub_id=target.id, reason=str(exc))
            return self._count(kind, Result(Outcome.REJECTED), "forbidden")
        except Exception as exc:
            self.log.info("push to subscription {sub_id} failed: {error}",
                          sub_id=target.id, error=repr(exc))
            return self._count(kind, Result(Outcome.FAILED), "error")
        self._metrics.push_latency.observe(max(0.0, self._clock.seconds() - started))
        outcome = classify(response.code)
        if outcome is not Outcome.DELIVERED:
            self.log.info("push to subscription {sub_id}: HTTP {status}",
                          sub_id=target.id, status=response.code)
        delay = retry_after(response.retry_after, self._clock.seconds())
        return self._count(kind, Result(outcome, delay, response.code))

    def _count(self, kind: str, result: Result, label: str | None = None) -> Result:
        self._metrics.push_deliveries.labels(kind, label or result.outcome.value).inc()
        return result
