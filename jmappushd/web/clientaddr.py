"""The real client address of a request, through reverse proxies the operator trusts.

``X-Forwarded-For`` and ``Forwarded`` (RFC 7239) are believed only when the peer that sent
them is in ``[server] trusted-proxies``. The list is then walked from the right (each proxy
appends the address it got the request from), skipping further trusted hops; the first
untrusted address is the client. From any other peer the headers are ignored, so a client
cannot choose the address its logs and limits are counted against.

Only the hops a trusted proxy wrote are ever read, and they are read from the right: what a
client put on the left of the header cannot change how the trusted part parses, and the work
is bounded by ``MAX_HOPS`` and ``MAX_HEADER_CHARS`` whatever the header's size.

When a request carries both headers, ``X-Forwarded-For`` is used: the common proxies (nginx,
HAProxy, Apache, Caddy, Traefik) append to it and pass a client's ``Forwarded`` through
untouched, so preferring ``Forwarded`` would let any client behind them choose its address.
A proxy that writes only ``Forwarded`` must therefore drop a client's ``X-Forwarded-For``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence

from twisted.web import http
from twisted.web.iweb import IRequest

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 32
"""Trusted hops walked at most; a longer chain counts as coming from the last one walked."""

MAX_HEADER_CHARS = 8192
"""Characters read from the end of a forwarding header (32 hops need far fewer)."""

# One list element of the *reversed* header text: commas inside a quoted string (RFC 7239
# §4 allows quoted values) do not end it. Reversed, a quoted string is still "...".
_ELEMENT_REVERSED = re.compile(r'(?:[^,"]|"[^"]*")*')
# The ``for`` parameter of a Forwarded element (parameter names are case-insensitive).
_FOR_PARAM = re.compile(r'(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.IGNORECASE)
_QUOTED_PAIR = re.compile(r"\\(.)")
# RFC 7239 §6: node-port = port / obfport; obfnode and obfport start with "_".
_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]{1,64}")

Hop = _Addr | str | None
"""One forwarded node: an address, an obfuscated identifier, or None (unknown, garbage)."""


def _unmapped(addr: _Addr) -> _Addr:
    """``::ffff:192.0.2.1`` is the IPv4 client 192.0.2.1 (a dual-stack socket's view)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _network(text: str) -> _Net:
    """A trusted network; an IPv4-mapped IPv6 network is its IPv4 network."""
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def parse_node(text: str) -> Hop:
    """A node as proxies write it: ``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]:80``,
    a bare IPv6 address (X-Forwarded-For), ``_hidden`` (obfuscated), else None."""
    text = text.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _PORT.fullmatch(port):
            return None
    else:
        host = text
    if host.startswith("_"):
        return host if _OBFUSCATED.fullmatch(host) else None
    try:
        return _unmapped(ipaddress.ip_address(host))
    except ValueError:
        return None  # "unknown", a name, garbage


def _elements_from_right(values: Sequence[bytes]) -> Iterator[str | None]:
    """The list elements of a header's lines, last first; None for a cut-off element.

    Empty elements (``a, , b``) are skipped, as RFC 9110 §5.6.1 asks of recipients.
    """
    joined = b",".join(values)
    cut = len(joined) > MAX_HEADER_CHARS
    reversed_text = joined[-MAX_HEADER_CHARS:].decode("latin-1")[::-1]
    pos, size = 0, len(reversed_text)
    while True:
        match = _ELEMENT_REVERSED.match(reversed_text, pos)
        assert match is not None  # the pattern matches the empty string
        end = match.end()
        element = reversed_text[pos:end][::-1]
        if end == size:
            if cut:
                yield None
            elif element.strip():
                yield element
            return
        if reversed_text[end] != ",":
            yield None  # an unbalanced quote: nothing to its left can be trusted
            return
        if element.strip():
            yield element
        pos = end + 1


def _forwarded_node(element: str) -> Hop:
    """The ``for`` node of one Forwarded element; None without exactly one."""
    found = _FOR_PARAM.findall(element)
    if len(found) != 1:
        return None
    value = found[0].strip()
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            return None
        value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return parse_node(value)


class ClientAddresses:
    """Resolves the client address of requests given the trusted proxy networks."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted: tuple[_Net, ...] = tuple(_network(n) for n in trusted_proxies)

    @property
    def trusts_any(self) -> bool:
        return bool(self._trusted)

    def is_trusted(self, addr: _Addr | None) -> bool:
        if addr is None:
            return False
        addr = _unmapped(addr)
        return any(addr in net for net in self._trusted)

    def of(self, request: IRequest | http.Request) -> str:
        """The client's address as text ("-" when the transport has none, e.g. a Unix socket).

        An IPv4-mapped IPv6 address is given as IPv4. Behind trusted proxies it may also be
        an obfuscated identifier (``_abc``) that a trusted proxy chose for its client.
        """
        host = getattr(request.getClientAddress(), "host", None)
        if not isinstance(host, str) or not host:
            return "-"
        if not self._trusted:
            if "." in host and ":" in host:  # only a mapped address needs parsing
                peer = parse_node(host)
                return str(peer) if peer is not None else host
            return host
        peer = parse_node(host)
        if not isinstance(peer, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return host
        if not self.is_trusted(peer):
            return str(peer)
        return self._walk(request, str(peer))

    def _walk(self, request: IRequest | http.Request, nearest: str) -> str:
        """Follow the forwarded hops from the trusted peer ``nearest`` towards the client."""
        for count, hop in enumerate(self._hops(request)):
            if count == MAX_HOPS:
                break
            if hop is None:
                return nearest  # "unknown" or garbage: count it as the proxy that wrote it
            if isinstance(hop, str):
                return hop  # an obfuscated identifier the trusted proxy gave its client
            if not self.is_trusted(hop):
                return str(hop)
            nearest = str(hop)
        return nearest

    @staticmethod
    def _hops(request: IRequest | http.Request) -> Iterator[Hop]:
        """The forwarded nodes, nearest first: X-Forwarded-For if present, else Forwarded."""
        headers = request.requestHeaders
        xff = headers.getRawHeaders(b"x-forwarded-for")
        if xff:
            for element in _elements_from_right(xff):
                yield None if element is None else parse_node(element)
            return
        forwarded = headers.getRawHeaders(b"forwarded")
        if forwarded:
            for element in _elements_from_right(forwarded):
                yield None if element is None else _forwarded_node(element)
