"""Connection endpoints to the upstream, made once per origin instead of once per request.

twisted.web's Agent asks its endpoint factory for an endpoint on every request, before it
looks in the keep-alive pool, and the standard factory builds a new ``HostnameEndpoint``
each time (the host IDNA-checked in pure Python) and, for https, a new TLS connection
creator from the policy (about 46 us here): per request, although the pool then reuses a
kept-alive connection and the endpoint is not used at all. The gateway talks to one
upstream through a handful of URLs, so :class:`OriginEndpoints` keeps one endpoint per
(scheme, host, port), built as the standard factory builds it, with public API only.
"""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from jmappushd.reactor import IDaemonReactor

__all__ = ["OriginEndpoints"]

MAX_ORIGINS = 64  # the session's, the API's, the event source's: a few; bounded anyway


@implementer(IAgentEndpointFactory)
class OriginEndpoints:
    """TCP for http, TLS over TCP for https (verified by ``policy``), one per origin."""

    def __init__(self, reactor: IDaemonReactor, policy: IPolicyForHTTPS,
                 connect_timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._timeout = connect_timeout
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}
        self.made = 0

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._make(uri)
            if len(self._endpoints) >= MAX_ORIGINS:
                self._endpoints.clear()
            self._endpoints[key] = endpoint
        return endpoint

    def _make(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the upstream host {uri.host!r} is not ASCII") from None
        self.made += 1
        endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"http":
            return endpoint
        return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
