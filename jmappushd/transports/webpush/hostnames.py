"""A push URL's host as the sender and the resolver will read it (defect 6, PS-18, C-PS-3).

The text a client sends is not the host that gets contacted. treq turns the URL into
an ASCII URI with hyperlink, whose host goes through IDNA 2008 with the UTS 46
mapping (the ``idna`` package): fullwidth digits, ideographic full stops (U+3002),
upper case and ignorable characters all map to plain ASCII, so a URL whose host is
``127.0.0.1`` in fullwidth digits (U+FF11, U+FF12, ...) is sent to ``127.0.0.1``.
Python's own resolver (``getaddrinfo`` on a str) applies IDNA 2003 (the ``idna``
codec: nameprep, which is NFKC-based) and resolves that text to 127.0.0.1 too. So
every SSRF check judges the UTS 46 form, the name that is actually used, *and* the
other readings (IDNA 2003, NFKC with case folding): a host is refused if any reading
is local.

A host that UTS 46 refuses (percent-encoding, which a WHATWG parser would decode, a
space, an underscore, a bidi error, an empty label) has no normal form to judge and
could not be sent by treq anyway, so it is an invalid ``url``, as is a zone identifier
on an IPv6 literal. IPv6 literals are judged as addresses (UTS 46 does not apply).
"""

from __future__ import annotations

import contextlib
import ipaddress
import unicodedata
from dataclasses import dataclass

import idna

__all__ = ["InvalidHost", "PushHost", "push_host", "split_netloc"]


class InvalidHost(ValueError):
    """The host cannot be normalised the way the sender would (an invalid ``url``)."""


@dataclass(frozen=True, slots=True)
class PushHost:
    """``name``: the ASCII host the sender uses; ``readings``: every form to judge."""

    name: str
    readings: tuple[str, ...]
    ipv6_literal: bool = False


def split_netloc(netloc: str) -> tuple[str, bool]:
    """The host part of an authority without userinfo: ``(host, bracketed)``."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise InvalidHost("url has an unterminated IPv6 literal")
        return netloc[1:end], True
    host = netloc.rpartition(":")[0] if ":" in netloc else netloc
    return host, False


def push_host(host: str, bracketed: bool = False) -> PushHost:
    """Normalise ``host`` (raw URL text, no port, no brackets) or raise InvalidHost."""
    if bracketed:
        return _ipv6_literal(host)
    if not host:
        raise InvalidHost("url has no host")
    if "%" in host:
        raise InvalidHost("url host must not be percent-encoded")
    try:
        name = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise InvalidHost(f"url host is not a valid host name ({exc})") from None
    readings = dict.fromkeys([name, unicodedata.normalize("NFKC", host).casefold()])
    # IDNA 2003 may refuse it; then getaddrinfo could not resolve that text either.
    with contextlib.suppress(UnicodeError):
        readings[host.encode("idna").decode("ascii").lower()] = None
    return PushHost(name, tuple(readings))


def _ipv6_literal(host: str) -> PushHost:
    if "%" in host:
        raise InvalidHost("url must not carry an IPv6 zone identifier")
    try:
        ip = ipaddress.IPv6Address(host)
    except ValueError:
        raise InvalidHost(f"url host [{host[:60]}] is not an IPv6 address") from None
    return PushHost(f"[{ip.compressed}]", (ip.compressed,), ipv6_literal=True)
