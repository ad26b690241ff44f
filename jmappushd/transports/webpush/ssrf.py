"""SSRF protection for push URLs (PS-18, C-PS-3, RFC 8620 §8.6).

Two checks, because a create-time check alone loses to DNS rebinding:

* :func:`check_push_url` at ``PushSubscription/set`` create: https only, no userinfo,
  no ``localhost``, and an IP-literal host must be public.
* :class:`GuardedEndpointFactory` at connect time: resolves the host itself, refuses
  the connection if *any* answer is non-public, then connects to one of the checked
  addresses (never resolving again) with TLS verified against the original hostname.

Both judge the host as it will be used, normalised by
:mod:`~jmappushd.transports.webpush.hostnames` (UTS 46, IDNA 2003, NFKC): fullwidth
digits or ideographic full stops do not hide ``127.0.0.1`` (defect 6).

``allow_private`` (a test/config switch) lifts the address rules, never the https one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from typing import TypeAlias
from urllib.parse import urlsplit

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from jmappushd.transports.webpush.hostnames import InvalidHost, PushHost, push_host, split_netloc

__all__ = ["ForbiddenAddress", "GuardedEndpointFactory", "check_push_url", "is_public_address"]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
# IPv4 ranges that are not globally reachable unicast (IANA special-purpose registry).
_BLOCKED_V4 = tuple(_V4(n) for n in (
    "0.0.0.0/8",        # "this network", includes the unspecified address
    "10.0.0.0/8",       # private
    "100.64.0.0/10",    # carrier-grade NAT
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local (cloud metadata lives here)
    "172.16.0.0/12",    # private
    "192.0.0.0/24",     # IETF protocol assignments
    "192.0.2.0/24",     # TEST-NET-1
    "192.88.99.0/24",   # 6to4 relay anycast (deprecated)
    "192.168.0.0/16",   # private
    "198.18.0.0/15",    # benchmarking
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",   # TEST-NET-3
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, includes 255.255.255.255 broadcast
))
# IPv6 is checked as an allow-list: global unicast 2000::/3 minus these ranges.
# Everything outside 2000::/3 (::1, ::, fc00::/7, fe80::/10, fec0::/10, ff00::/8,
# 100::/64, 64:ff9b:1::/48, ...) is refused, except the v4-embedding forms below.
_GLOBAL_V6 = _V6("2000::/3")
_BLOCKED_V6 = tuple(_V6(n) for n in (
    "2001::/23",      # IETF protocol assignments (Teredo, ORCHID, benchmarking)
    "2001:db8::/32",  # documentation
    "3fff::/20",      # documentation (RFC 9637)
))
_MAPPED = _V6("::ffff:0:0/96")   # IPv4-mapped
_NAT64 = _V6("64:ff9b::/96")     # well-known NAT64 prefix (RFC 6052)
_SIX_TO_FOUR = _V6("2002::/16")  # 6to4 (RFC 3056): v4 in bits 16-47
_LOCALHOST = re.compile(r"(?:.*\.)?localhost\.?", re.IGNORECASE)
_NUMERIC_HOST = re.compile(r"[0-9a-fA-Fx.]+")


class ForbiddenAddress(Exception):
    """A push URL's host is, or resolves to, an address we must not contact (PS-18)."""


def _public_v4(ip: ipaddress.IPv4Address) -> bool:
    return not any(ip in net for net in _BLOCKED_V4)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried by a mapped, NAT64 or 6to4 IPv6 address, if any."""
    if ip in _MAPPED or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally reachable unicast addresses (PS-18).

    Refused: loopback, private (RFC 1918, fc00::/7), link-local, site-local,
    multicast, unspecified, reserved, CGNAT, 0/8, broadcast, documentation and
    benchmarking ranges, and IPv6 forms embedding such an IPv4 address
    (``::ffff:127.0.0.1``, ``64:ff9b::a00:1``, ``2002:0a00:0001::``).
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return _public_v4(ip)
    embedded = _embedded_v4(ip)
    if embedded is not None:
        return _public_v4(embedded)
    return ip in _GLOBAL_V6 and not any(ip in net for net in _BLOCKED_V6)


def _ip_literal(host: str) -> IPAddress | None:
    """Parse ``host`` as an IP literal, including the legacy forms ``127.1``/``0x7f000001``."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:  # what getaddrinfo would accept, so it must be judged the same way
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_push_url(url: str, allow_private: bool) -> None:
    """Create-time check of a PushSubscription ``url`` (PS-1, PS-18, C-PS-3).

    Raises ValueError for a malformed or non-https URL and :class:`ForbiddenAddress`
    for a host that is a non-public IP literal or a ``localhost`` name (unless
    ``allow_private``). Names are judged again at connect time.
    """
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValueError("url must not contain whitespace or control characters")
    parts = urlsplit(url)
    if url[:8].lower() != "https://":
        raise ValueError("url must be https")
    if "@" in parts.netloc:
        raise ValueError("url must not contain userinfo")
    if not parts.hostname:
        raise ValueError("url has no host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("url has an invalid port") from None
    host = push_host(*split_netloc(parts.netloc))  # InvalidHost is a ValueError
    if not allow_private:
        _refuse_local(host)


def _refuse_local(host: PushHost) -> None:
    """ForbiddenAddress if any reading of ``host`` is ``localhost`` or a non-public literal."""
    for reading in host.readings:
        if _LOCALHOST.fullmatch(reading):
            raise ForbiddenAddress(f"push host {host.name!r} is local")
        ip = _ip_literal(reading.rstrip("."))
        if ip is not None and not is_public_address(ip):
            raise ForbiddenAddress(f"push host {host.name} is not a public address")


@implementer(IResolutionReceiver)
class _Collector:
    """Gathers one resolution's answers and fires a Deferred with them."""

    def __init__(self) -> None:
        self.addresses: list[IPAddress] = []
        self.done: Deferred[list[IPAddress]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, taddress.IPv4Address | taddress.IPv6Address):
            try:
                ip = ipaddress.ip_address(address.host)
            except ValueError:
                return
            if ip not in self.addresses:
                self.addresses.append(ip)

    def resolutionComplete(self) -> None:
        if not self.done.called:  # it may have been cancelled meanwhile
            self.done.callback(self.addresses)


@implementer(IStreamClientEndpoint)
class _GuardedEndpoint:
    """Resolve, check every answer, then connect to a checked address (PS-18)."""

    def __init__(self, factory: GuardedEndpointFactory, uri: URI) -> None:
        self._factory = factory
        self._scheme = uri.scheme
        self._hostname = uri.host.decode("ascii")
        self._port = uri.port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        addresses = await self._factory.checked_addresses(self._hostname, self._port)
        failure: ConnectError | None = None
        for ip in addresses[: self._factory.max_attempts]:
            endpoint = self._factory.endpoint_for_address(
                self._scheme, self._hostname, ip, self._port)
            try:
                return await endpoint.connect(protocolFactory)
            except ConnectError as exc:  # try the next checked address
                failure = exc
        raise failure or ConnectError(string="no address to connect to")


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """An ``IAgentEndpointFactory`` that refuses non-public targets at connect time.

    Use as ``Agent.usingEndpointFactory(reactor, GuardedEndpointFactory(...), pool=...)``.
    Answers are checked all together, so a rebinding name that returns one public and
    one private address is refused. Up to ``max_attempts`` checked addresses are tried
    in resolver order when connecting fails.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTCP,
        allow_private: bool,
        tls_policy: IPolicyForHTTPS | None = None,
        connect_timeout: float = 10,
        *,
        resolver: IHostnameResolver | None = None,
        max_attempts: int = 4,
    ) -> None:
        self._reactor = reactor
        self._allow_private = allow_private
        if tls_policy is None:
            tls_policy = BrowserLikePolicyForHTTPS()
        self._tls_policy = tls_policy
        self._timeout = connect_timeout
        self._resolver = (resolver if resolver is not None
                          else IReactorPluggableNameResolver(reactor).nameResolver)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """Return a guarded endpoint for an http(s) URI; other schemes are refused."""
        if uri.scheme not in (b"https", b"http"):
            raise ValueError(f"unsupported scheme {uri.scheme!r}")
        if not uri.host:
            raise ValueError("URI has no host")
        return _GuardedEndpoint(self, uri)

    async def checked_addresses(self, hostname: str, port: int) -> Sequence[IPAddress]:
        """Resolve ``hostname`` (or take the IP literal) and vet every answer; the name
        is normalised first, as at create time, and resolved in that form."""
        inner = hostname[1:-1] if hostname.startswith("[") else hostname
        try:  # the agent's URI gives an IPv6 literal without brackets
            normal = push_host(inner, ":" in inner)
        except InvalidHost as exc:
            raise ForbiddenAddress(f"push host {hostname[:100]!r} refused: {exc}") from None
        if not self._allow_private:
            _refuse_local(normal)
        host = normal.readings[0]
        literal = _ip_literal(host)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            addresses = await self._resolve(host, port)
            if not addresses:
                raise DNSLookupError(host)
        if not self._allow_private:
            refused = [str(ip) for ip in addresses if not is_public_address(ip)]
            if refused:
                self.log.warn("push host {host} resolves to non-public {refused}; refused",
                              host=host, refused=refused)
                raise ForbiddenAddress(f"push host {host} resolves to non-public {refused}")
        return addresses

    def _resolve(self, host: str, port: int) -> Deferred[list[IPAddress]]:
        collector = _Collector()
        self._resolver.resolveHostName(
            collector, host, portNumber=port,
            addressTypes=[taddress.IPv4Address, taddress.IPv6Address],
            transportSemantics="TCP")
        return collector.done

    def endpoint_for_address(self, scheme: bytes, hostname: str, ip: IPAddress,
                             port: int) -> IStreamClientEndpoint:
        """A TCP endpoint to the checked ``ip``, TLS-wrapped for https with ``hostname`` for
        SNI and certificate verification."""
        tcp: IStreamClientEndpoint
        if isinstance(ip, ipaddress.IPv4Address):
            tcp = TCP4ClientEndpoint(self._reactor, str(ip), port, timeout=self._timeout)
        else:
            tcp = TCP6ClientEndpoint(
                self._reactor, str(ip), port, timeout=self._timeout)
        if scheme != b"https":
            return tcp
        host = hostname[1:-1] if hostname.startswith("[") else hostname
        creator = self._tls_policy.creatorForNetloc(host.encode("ascii"), port)
        return wrapClientTLS(creator, tcp)
