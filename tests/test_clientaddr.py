"""The client address behind trusted reverse proxies (``[server] trusted-proxies``).

Requests are real ``twisted.web`` requests on a fake channel whose peer address the test
sets; only the forwarding headers and the peer vary.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.web.clientaddr import MAX_HEADER_CHARS, MAX_HOPS, ClientAddresses, parse_node

PROXIES = ("127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8")


def request(peer: str, **headers: str | list[str]) -> Request:
    """A request from ``peer`` (IPv4, IPv6, or "unix") with these headers."""
    req = Request(DummyChannel())
    if peer == "unix":
        req.client = UNIXAddress(b"/run/jmappushd.sock")
    elif ":" in peer:
        req.client = IPv6Address("TCP", peer, 41000)
    else:
        req.client = IPv4Address("TCP", peer, 41000)
    for name, value in headers.items():
        values = value if isinstance(value, list) else [value]
        req.requestHeaders.setRawHeaders(name.replace("_", "-"), [v.encode() for v in values])
    return req


def resolve(peer: str, trusted: tuple[str, ...] = PROXIES, /, **headers: str | list[str]
            ) -> str:
    return ClientAddresses(trusted).of(request(peer, **headers))


# -- untrusted peers cannot choose their address ------------------------------------------


@pytest.mark.parametrize("headers", [
    {"x_forwarded_for": "198.51.100.7"},
    {"forwarded": "for=198.51.100.7"},
    {"x_forwarded_for": "10.0.0.1", "forwarded": "for=10.0.0.1"},
])
def test_headers_from_an_untrusted_peer_are_ignored(headers: dict[str, str]) -> None:
    """A client talking to the daemon directly sends forwarding headers: its own address
    is used, so it can neither hide nor blame another address."""
    assert resolve("203.0.113.9", **headers) == "203.0.113.9"


def test_no_trusted_proxies_means_no_header_is_believed() -> None:
    """With the key empty (the default) even a loopback peer's headers are ignored."""
    assert resolve("127.0.0.1", (), x_forwarded_for="198.51.100.7") == "127.0.0.1"
    assert not ClientAddresses(()).trusts_any
    assert ClientAddresses(PROXIES).trusts_any


def test_spoofed_entries_left_of_the_proxy_are_ignored() -> None:
    """nginx appends the address it saw to what the client sent; only the appended part
    counts, whatever the client wrote before it."""
    assert resolve("127.0.0.1", x_forwarded_for="10.0.0.9, 6.6.6.6, 198.51.100.7"
                   ) == "198.51.100.7"
    assert resolve("127.0.0.1", forwarded="for=10.0.0.9, for=198.51.100.7") == "198.51.100.7"


def test_x_forwarded_for_wins_over_a_forwarded_header_the_client_sent() -> None:
    """A proxy that sets X-Forwarded-For passes a client's Forwarded header through
    unchanged: with both present, X-Forwarded-For is the one a trusted proxy wrote."""
    assert resolve("127.0.0.1", x_forwarded_for="198.51.100.7", forwarded="for=6.6.6.6"
                   ) == "198.51.100.7"


def test_a_forwarded_header_alone_is_used() -> None:
    """A proxy writing only RFC 7239's Forwarded is followed just the same."""
    assert resolve("127.0.0.1", forwarded="for=198.51.100.7;proto=https;by=127.0.0.1"
                   ) == "198.51.100.7"


# -- chains ---------------------------------------------------------------------------------


def test_several_trusted_hops_are_skipped() -> None:
    """client → CDN edge (10.0.0.2) → load balancer (10.0.0.3) → nginx (127.0.0.1): the
    first untrusted address from the right is the client."""
    assert resolve("127.0.0.1", x_forwarded_for="6.6.6.6, 203.0.113.5, 10.0.0.2, 10.0.0.3"
                   ) == "203.0.113.5"
    assert resolve("127.0.0.1", forwarded="for=6.6.6.6,for=203.0.113.5, for=10.0.0.2"
                   ) == "203.0.113.5"


def test_several_header_lines_form_one_list() -> None:
    """Header lines of the same name are one comma-separated list, in order."""
    assert resolve("127.0.0.1", x_forwarded_for=["6.6.6.6", "198.51.100.7, 10.0.0.3"]
                   ) == "198.51.100.7"


def test_when_every_hop_is_trusted_the_farthest_one_is_the_client() -> None:
    """A client on a trusted network itself (an internal host through nginx)."""
    assert resolve("127.0.0.1", x_forwarded_for="10.0.0.5, 10.0.0.6") == "10.0.0.5"


def test_a_trusted_peer_without_headers_is_the_client() -> None:
    """A local tool talking to the daemon directly from a trusted address."""
    assert resolve("127.0.0.1") == "127.0.0.1"
    assert resolve("127.0.0.1", x_forwarded_for="") == "127.0.0.1"


def test_empty_list_elements_are_skipped() -> None:
    """RFC 9110 §5.6.1: recipients ignore empty elements such as ``a, , b``."""
    assert resolve("127.0.0.1", x_forwarded_for="198.51.100.7, ,") == "198.51.100.7"


# -- IPv6 and IPv4-mapped addresses ----------------------------------------------------------


def test_ipv6_proxies_and_clients() -> None:
    """IPv6 peers, bare IPv6 in X-Forwarded-For, bracketed ones with ports in Forwarded."""
    assert resolve("::1", x_forwarded_for="2001:db8::7") == "2001:db8::7"
    assert resolve("::1", x_forwarded_for="[2001:db8::7]:4711") == "2001:db8::7"
    assert resolve("fd00::2", forwarded='for="[2001:db8:cafe::17]:4711"') == "2001:db8:cafe::17"
    assert resolve("2001:db8::9", x_forwarded_for="198.51.100.7") == "2001:db8::9"


def test_ipv4_mapped_addresses_are_their_ipv4_address() -> None:
    """A dual-stack listener sees IPv4 peers as ``::ffff:a.b.c.d``: they are trusted as
    the IPv4 address, and reported (and counted) as IPv4."""
    assert resolve("::ffff:127.0.0.1", x_forwarded_for="198.51.100.7") == "198.51.100.7"
    assert resolve("::ffff:127.0.0.1", x_forwarded_for="::ffff:198.51.100.7") == "198.51.100.7"
    assert resolve("::ffff:203.0.113.9", x_forwarded_for="198.51.100.7") == "203.0.113.9"
    assert resolve("::ffff:203.0.113.9", ()) == "203.0.113.9"
    assert resolve("::ffff:10.1.2.3", ("::ffff:10.0.0.0/104",), x_forwarded_for="198.51.100.7"
                   ) == "198.51.100.7"


def test_ipv6_addresses_never_match_ipv4_networks() -> None:
    """``::7f00:1`` has the bits of 127.0.0.1 but is not in 127.0.0.0/8."""
    assert resolve("::7f00:1", ("127.0.0.0/8",), x_forwarded_for="6.6.6.6") == "::7f00:1"


# -- unknown, obfuscated and garbage ---------------------------------------------------------


@pytest.mark.parametrize("value", [
    "unknown", "not-an-address", "198.51.100.7:http", "198.51.100.7 junk", "[2001:db8::1",
    "[2001:db8::1]x", "256.1.1.1", "01.2.3.4", "_", "_bad!id", '"198.51.100.7"',
])
def test_garbage_from_a_trusted_proxy_counts_as_that_proxy(value: str) -> None:
    """An element a trusted proxy wrote but that names no client (``unknown``, garbage):
    the client is counted as the proxy that wrote it, never as something further left."""
    assert resolve("127.0.0.1", x_forwarded_for=f"6.6.6.6, {value}") == "127.0.0.1"
    assert resolve("127.0.0.1", x_forwarded_for=f"6.6.6.6, {value}, 10.0.0.2") == "10.0.0.2"


def test_garbage_beyond_the_client_does_not_matter() -> None:
    """Whatever the client itself sent is never parsed for meaning."""
    assert resolve("127.0.0.1", x_forwarded_for='junk"", [::, 198.51.100.7') == "198.51.100.7"


@pytest.mark.parametrize(("value", "client"), [
    ("for=_hidden", "_hidden"),
    ('for="_SEVKISEK:_port"', "_SEVKISEK"),
    ("FOR=198.51.100.7", "198.51.100.7"),
    ('for="198.51.100.7:8080";proto=https', "198.51.100.7"),
    ('for="\\[2001:db8::1\\]:80"', "2001:db8::1"),  # RFC 7230 quoted-pairs
    ('for=198.51.100.7;host="a,b;for=6.6.6.6"', "127.0.0.1"),  # two "for": not trusted
    ("proto=https;by=10.0.0.1", "127.0.0.1"),  # an element without "for"
    ('for="198.51.100.7', "127.0.0.1"),  # an unterminated quoted string
    ("for=unknown", "127.0.0.1"),
])
def test_forwarded_elements(value: str, client: str) -> None:
    """RFC 7239 §4-§6: quoted values, ports, obfuscated identifiers (a stable name the
    proxy chose for its client, used as given), case-insensitive names; an element that
    names no single client counts as the proxy."""
    assert resolve("127.0.0.1", forwarded=value) == client


def test_quoted_commas_do_not_split_elements() -> None:
    """A comma inside a quoted value is part of that element, not a list separator."""
    # Split at that comma, the nearest element would be the garbage 'for=10.0.0.1"'.
    assert resolve("127.0.0.1", forwarded='for=6.6.6.6, for=198.51.100.7;host="x,for=10.0.0.1"'
                   ) == "198.51.100.7"
    assert resolve("127.0.0.1", forwarded='for=198.51.100.7;host="x, y"') == "198.51.100.7"


def test_a_stray_quote_left_of_the_proxy_cannot_swallow_its_element() -> None:
    """The client opens a quoted string the proxy's appended element would close if the
    header were parsed from the left; read from the right, the proxy's element stands."""
    assert resolve("127.0.0.1", forwarded=['for="6.6.6.6', 'for=198.51.100.7;host="h"']
                   ) == "198.51.100.7"


def test_parse_node_forms() -> None:
    """Every node form proxies write."""
    assert str(parse_node("198.51.100.7")) == "198.51.100.7"
    assert str(parse_node(" 198.51.100.7:443 ")) == "198.51.100.7"
    assert str(parse_node("[::1]")) == "::1"
    assert parse_node("_x.y-z") == "_x.y-z"
    assert parse_node("unknown") is None
    assert parse_node("") is None


# -- bounded work -----------------------------------------------------------------------------


def test_long_chains_of_trusted_hops_stop_at_the_limit() -> None:
    """A client on a trusted network cannot get past MAX_HOPS trusted entries to make the
    daemon believe a spoofed address at the far end."""
    chain = "6.6.6.6, " + ", ".join(["10.0.0.1"] * (MAX_HOPS + 5))
    assert resolve("127.0.0.1", x_forwarded_for=chain) == "10.0.0.1"
    chain = ", ".join(["6.6.6.6", *(["10.0.0.1"] * (MAX_HOPS - 1))])
    assert resolve("127.0.0.1", x_forwarded_for=chain) == "6.6.6.6"


def test_only_the_tail_of_a_huge_header_is_read() -> None:
    """An element reaching past the last MAX_HEADER_CHARS characters is cut off and counts
    as unknown; the trusted hops after it still resolve."""
    padded = "6.6.6.6" + " " * MAX_HEADER_CHARS + ", 10.0.0.3"
    assert resolve("127.0.0.1", x_forwarded_for=padded) == "10.0.0.3"
    huge = "x" * 5_000_000 + ", 198.51.100.7"
    assert resolve("127.0.0.1", x_forwarded_for=huge) == "198.51.100.7"
    many = ["6.6.6.6"] * 50_000 + ["198.51.100.7"]
    assert resolve("127.0.0.1", forwarded=[f"for={v}" for v in many]) == "198.51.100.7"


# -- other transports -------------------------------------------------------------------------


def test_a_unix_socket_peer_has_no_address() -> None:
    """The access log shows "-" for a Unix-socket (or systemd socket) peer."""
    assert resolve("unix", x_forwarded_for="198.51.100.7") == "-"


def test_is_trusted() -> None:
    """``is_trusted`` is what login throttling and per-address limits may ask directly."""
    import ipaddress

    clients = ClientAddresses(PROXIES)
    assert clients.is_trusted(ipaddress.ip_address("10.200.0.1"))
    assert clients.is_trusted(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not clients.is_trusted(ipaddress.ip_address("127.0.0.2"))
    assert not clients.is_trusted(None)
