"""The real client address of a request, through reverse proxies the operator trusts.

``X-Forwarded-For`` and ``Forwarded`` (RFC 7239) are believed only when the peer that sent
them is in ``[server] trusted-proxies``; the chain is then walked from the right, skipping
further trusted hops, and the first untrusted address is the client. From any other peer the
headers are ignored, so a client cannot choose the address its limits are counted against.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from twisted.web.iweb import IRequest

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 7239 §4: for=192.0.2.60, for="[2001:db8::1]:4711", for=unknown, for=_hidden
_FORWARDED_FOR = re.compile(r'(?:^|[;,\s])for=(?:"([^"]*)"|([^;,\s]*))', re.IGNORECASE)
_MAX_HOPS = 32  # a longer chain is not walked further (bounded work per request)


def _parse_addr(text: str) -> _Addr | None:
    """An address from a header element: bare, ``[v6]``, ``[v6]:port`` or ``v4:port``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class ClientAddresses:
    """Resolves the client address of requests given the trusted proxy networks."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted: tuple[_Net, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted_proxies)

    @property
    def trusts_any(self) -> bool:
        return bool(self._trusted)

    def is_trusted(self, addr: _Addr | None) -> bool:
        if addr is None:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._trusted)

    def of(self, request: IRequest) -> str:
        """The client's address as text ("-" when the transport has none, e.g. a Unix socket)."""
        peer = getattr(request.getClientAddress(), "host", None)
        if not isinstance(peer, str) or not peer:
            return "-"
        if not self._trusted or not self.is_trusted(_parse_addr(peer)):
            return peer
        chain = self._forwarded_chain(request)
        for hop in reversed(chain[-_MAX_HOPS:]):
            addr = _parse_addr(hop)
            if addr is None:
                return peer  # garbage or "unknown" from a trusted proxy: count it as the proxy
            if not self.is_trusted(addr):
                return str(addr)
        return peer if not chain else str(_parse_addr(chain[0]) or peer)

    @staticmethod
    def _forwarded_chain(request: IRequest) -> list[str]:
        """Client-first list of hops: ``Forwarded`` if present, else ``X-Forwarded-For``."""
        headers = request.requestHeaders
        forwarded = headers.getRawHeaders(b"forwarded") or []
        if forwarded:
            joined = ",".join(v.decode("latin-1") for v in forwarded)
            return [m.group(1) if m.group(1) is not None else m.group(2)
                    for m in _FORWARDED_FOR.finditer(joined)]
        xff = headers.getRawHeaders(b"x-forwarded-for") or []
        joined = ",".join(v.decode("latin-1") for v in xff)
        return [part.strip() for part in joined.split(",") if part.strip()]
