"""The gateway's HTTP client for the upstream JMAP server: one keep-alive pool, bounded.

Every upstream request goes through :class:`UpstreamClient`: a bare Agent over one
persistent pool of ``[upstream] max-connections`` (one endpoint per origin,
``endpoints.py``), TLS verified against the system store or
``ca-file``, no redirects followed, every request (head and body) bounded by
``[upstream] timeout`` on the injected clock, and every body bounded in size. Requests carry
the client's ``Authorization`` and nothing else of anyone's: no cookie jar (the pool serves
every user, so a cookie one user's answer set would ride along the next user's request, as
treq's shared jar did) and no ``Accept-Encoding`` (the upstream is normally on the same
host or network, where compressing every answer costs CPU on both ends and saves nothing;
Cyrus gzips a 500-byte Mailbox/get when asked). Failures come
out as two exceptions only: :class:`UpstreamUnavailable` (connection refused, timeout, TLS
failure, 5xx, an oversized or garbled answer: the upstream's fault or the network's) and
:class:`UpstreamRejected` (401/403: the client's credentials, passed on with the upstream's
``WWW-Authenticate``). :class:`UpstreamHealth` turns a run of failures into one log line at
the outage and one at the recovery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast
from urllib.parse import urlsplit

import treq
from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from jmappushd.config import UpstreamConfig
from jmappushd.gateway.endpoints import OriginEndpoints
from jmappushd.net.bytesbody import BytesProducer
from jmappushd.reactor import IDaemonReactor

__all__ = ["UpstreamClient", "UpstreamHealth", "UpstreamRejected", "UpstreamResponse",
           "UpstreamUnavailable", "load_ca_policy"]

JSON = b"application/json"


class UpstreamUnavailable(Exception):
    """The upstream could not answer usefully; ``reason`` is one line for clients and logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamRejected(Exception):
    """The upstream refused the credentials (401 or 403)."""

    def __init__(self, status: int, challenges: Sequence[bytes]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.challenges = tuple(challenges)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A 2xx/4xx answer the caller interprets (a JMAP response, a problem)."""

    status: int
    content_type: bytes
    body: bytes


@implementer(IPolicyForHTTPS)
class _PrivateCA:
    """TLS to an upstream whose certificate chains to the operator's own CA bundle."""

    def __init__(self, roots: Sequence[Certificate]) -> None:
        self._trust = trustRootFromCertificates(list(roots))

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust)


def load_ca_policy(ca_file: str) -> IPolicyForHTTPS:
    """The TLS policy for ``[upstream] ca-file`` ("" = the system trust store).

    Raises ValueError naming the problem (unreadable, no certificate in it).
    """
    if not ca_file:
        return BrowserLikePolicyForHTTPS()
    try:
        with open(ca_file, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {ca_file}: {e.strerror or e}") from None
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + part for part in pem.split(marker)[1:]]
    roots = []
    for block in blocks:
        try:
            roots.append(Certificate.loadPEM(block))
        except Exception as e:  # pyOpenSSL raises its own Error types
            raise ValueError(f"{ca_file}: not a PEM certificate ({e})") from None
    if not roots:
        raise ValueError(f"{ca_file}: holds no PEM certificate")
    return _PrivateCA(roots)


class UpstreamHealth:
    """Logs the upstream's outage once, when it starts, and its recovery once, when it ends."""

    log = Logger()

    def __init__(self, clock: IReactorTime, name: str) -> None:
        self._clock = clock
        self._name = name
        self._down_since: float | None = None
        self.last_reason = ""

    @property
    def up(self) -> bool:
        return self._down_since is None

    def failed(self, reason: str) -> None:
        self.last_reason = reason
        if self._down_since is None:
            self._down_since = self._clock.seconds()
            self.log.warn("Upstream {upstream} is unavailable: {reason}",
                          upstream=self._name, reason=reason)

    def answered(self) -> None:
        if self._down_since is not None:
            lasted = self._clock.seconds() - self._down_since
            self._down_since = None
            self.log.info("Upstream {upstream} answers again (unavailable for {lasted:.1f}s)",
                          upstream=self._name, lasted=lasted)


class _Collector:
    """Gathers a body up to a bound; beyond it the answer counts as garbled."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def __call__(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise _TooLong()
        self.parts.append(data)


class _TooLong(Exception):
    pass


class UpstreamClient:
    """GET and POST to the upstream with the client's (or the reader's) Authorization."""

    def __init__(self, reactor: IDaemonReactor, config: UpstreamConfig, max_body: int,
                 tls_policy: IPolicyForHTTPS | None = None,
                 agent: IAgent | None = None) -> None:
        """``agent`` replaces the pooled Agent (tests); requests go to it unwrapped."""
        self._clock: IReactorTime = reactor
        self._timeout = config.timeout_s
        self._max_body = max_body
        self.name = _display(config.session_url)
        self.health = UpstreamHealth(reactor, self.name)
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = config.max_connections
            pool.retryAutomatically = False  # a POST of JMAP calls must not be sent twice
            policy = tls_policy if tls_policy is not None else load_ca_policy(config.ca_file)
            endpoints = OriginEndpoints(reactor, policy, self._timeout)
            agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
            self._pool = pool
        self._agent = agent
        self._client = HTTPClient(agent, data_to_body_producer=BytesProducer)

    @property
    def http(self) -> HTTPClient:
        """A treq client over the same pool, for long-lived requests (the upstream event
        stream, which only the reader's credentials use)."""
        return self._client

    def get(self, url: str, authorization: bytes) -> Deferred[UpstreamResponse]:
        return self._request(b"GET", url, authorization, None)

    def post_json(self, url: str, authorization: bytes, body: bytes
                  ) -> Deferred[UpstreamResponse]:
        return self._request(b"POST", url, authorization, body)

    def _request(self, method: bytes, url: str, authorization: bytes, body: bytes | None
                 ) -> Deferred[UpstreamResponse]:
        d = Deferred.fromCoroutine(self._send(method, url, authorization, body))
        # treq's own timeout covers the response head; this one covers the body too.
        d.addTimeout(self._timeout, self._clock)
        return d.addErrback(self._classify)

    async def _send(self, method: bytes, url: str, authorization: bytes, body: bytes | None
                    ) -> UpstreamResponse:
        headers = Headers({b"authorization": [authorization], b"accept": [JSON]})
        producer = None
        if body is not None:
            headers.setRawHeaders(b"content-type", [JSON])
            producer = BytesProducer(body)
        # The Agent follows no redirect; the timeout of _request covers head and body.
        response: IResponse = await self._agent.request(method, wire_url(url), headers,
                                                        producer)
        status = int(response.code)
        if status in (401, 403):
            challenges = response.headers.getRawHeaders(b"www-authenticate") or []
            await treq.collect(response, _Collector(self._max_body))
            self.health.answered()  # it answered: the network and the server are fine
            raise UpstreamRejected(status, challenges)
        if status >= 500:
            raise UpstreamUnavailable(f"{self.name} answered {status}")
        if response.length is not UNKNOWN_LENGTH and response.length > self._max_body:
            raise UpstreamUnavailable(f"{self.name} answered a body over {self._max_body} bytes")
        collector = _Collector(self._max_body)
        try:
            await treq.collect(response, collector)
        except _TooLong:
            raise UpstreamUnavailable(
                f"{self.name} answered a body over {self._max_body} bytes") from None
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        self.health.answered()
        return UpstreamResponse(status, content_type, b"".join(collector.parts))

    def _classify(self, failure: Failure) -> UpstreamResponse:
        if failure.check(UpstreamRejected):
            failure.raiseException()
        if failure.check(UpstreamUnavailable):
            reason = cast(UpstreamUnavailable, failure.value).reason
        elif _timed_out(failure):
            reason = f"{self.name} did not answer within {self._timeout:g}s"
        else:
            reason = f"{self.name} is unreachable: {_one_line(failure.value)}"
        self.health.failed(reason)
        raise UpstreamUnavailable(reason)

    def close(self) -> Deferred[None]:
        """Close the pool's idle connections (at stop)."""
        if self._pool is None:
            return succeed(None)
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


def _timed_out(failure: Failure) -> bool:
    """A timeout, ours or treq's (which cancels the request: ResponseNeverReceived or
    ResponseFailed wrapping CancelledError)."""
    if failure.check(TimeoutError, CancelledError, error.TimeoutError):
        return True
    if failure.check(ResponseNeverReceived, ResponseFailed):
        reasons = getattr(failure.value, "reasons", [])
        return any(isinstance(r, Failure) and r.check(CancelledError, error.TimeoutError)
                   for r in reasons)
    return False


@lru_cache(maxsize=256)
def wire_url(url: str) -> bytes:
    """``url`` as the request line needs it (IDNA host, percent-encoded path), computed
    once per URL: the gateway talks to a handful (the session, the API, each user's)."""
    return EncodedURL.from_text(url).to_uri().to_text().encode("ascii")


def _display(url: str) -> str:
    """The upstream as logs and problems name it: scheme, host and port, no path or secrets."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else url


def _one_line(error: object) -> str:
    """A short, single-line reason (ResponseFailed & co. wrap the real one in ``reasons``)."""
    reasons = getattr(error, "reasons", None)
    if reasons and isinstance(reasons[0], Failure):
        error = reasons[0].value
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:200]
