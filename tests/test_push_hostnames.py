"""Defect 6: push URL hosts are normalised (UTS 46, IDNA 2003, NFKC) before every SSRF
check, at create time and at connect time (PS-18, C-PS-3, C-PS-5, API-18).

The hosts below are written with escapes: ``\\uff11`` is FULLWIDTH DIGIT ONE, ``\\uff0e``
FULLWIDTH FULL STOP, ``\\u3002`` IDEOGRAPHIC FULL STOP, ``\\u2460`` CIRCLED DIGIT ONE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_twisted
from hyperlink import EncodedURL

from jmappushd.transports.webpush.hostnames import InvalidHost, push_host, split_netloc
from jmappushd.transports.webpush.ssrf import ForbiddenAddress, check_push_url
from jmappushd.transports.webpush.validate import SetFailure, check_url
from tests.push_receiver import FAST, PushWorld, start_world
from tests.support import basic
from tests.test_push_ssrf import connect, failure_of, make_factory

FULLWIDTH_127 = "\uff11\uff12\uff17.\uff10.\uff10.\uff11"  # "127.0.0.1", fullwidth digits
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")

REFUSED_HOSTS = [
    FULLWIDTH_127,
    "127\u30020\u30020\u30021",  # ideographic full stops
    "\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11:8443",
    "\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11",  # fullwidth full stops
    "127.0.0.1\u3002",  # an ideographic trailing dot
    "127.0.0.1.",
    "\u2460\u2461\u2466.0.0.1",  # circled digits, NFKC 127
    "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54",  # fullwidth "localhost"
    "LocalHost.", "PUSH.LOCALHOST",
    "2130706433", "0x7f.1", "0177.0.0.1", "127.1", "\uff10x7f.1",  # legacy IPv4 forms
    "[::FFFF:7F00:1]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[fe80::1]",
    "10.0.0.1\uff0e",  # private, with a fullwidth trailing dot
]
INVALID_HOSTS = [
    ("%31%32%37.0.0.1", "percent-encoded"),
    ("127.0.0.%31", "percent-encoded"),
    ("push_service.example", "not a valid host name"),
    ("\u0661\u0662\u0667.\u0660.\u0660.\u0661", "not a valid host name"),  # Arabic-Indic
    ("a..example", "not a valid host name"),
    ("127.0.0.1..", "not a valid host name"),
    ("[fe80::1%25eth0]", "zone identifier"),
    ("[::1x]", "IPv6 address"),
]
ACCEPTED_HOSTS = [
    ("Push.Example.NET", "push.example.net"),
    ("push.example.net.", "push.example.net."),
    ("b\u00fccher.example", "xn--bcher-kva.example"),
    ("\uff18.\uff18.\uff18.\uff18", "8.8.8.8"),  # fullwidth, but public
    ("[2606:4700:0::1]", "[2606:4700::1]"),
    ("fcm.googleapis.com", "fcm.googleapis.com"),
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_local_hosts_in_any_spelling_are_forbidden_at_create(host: str) -> None:
    """PS-18, C-PS-3 (defect 6): a host that the sender or the resolver reads as loopback,
    private or localhost is refused, however it is spelled; allowed in test mode."""
    url = f"https://{host}/p"
    with pytest.raises(ForbiddenAddress):
        check_push_url(url, allow_private=False)
    check_push_url(url, allow_private=True)


@pytest.mark.parametrize(("host", "message"), INVALID_HOSTS)
def test_hosts_that_do_not_normalise_are_invalid(host: str, message: str) -> None:
    """C-PS-3, API-18: a host with no UTS 46 form (percent-encoding, underscores, bidi
    errors, empty labels, zone ids) is an invalid url, even in test mode."""
    for allow_private in (False, True):
        with pytest.raises(ValueError, match=message):
            check_push_url(f"https://{host}/p", allow_private=allow_private)


@pytest.mark.parametrize(("host", "name"), ACCEPTED_HOSTS)
def test_public_hosts_pass_and_normalise_like_the_sender(host: str, name: str) -> None:
    """The normal form is the host treq (hyperlink, UTS 46) will connect to."""
    check_push_url(f"https://{host}/p", allow_private=False)
    assert push_host(*split_netloc(host)).name == name
    if not host.startswith("["):  # hyperlink cannot encode IPv6 literals at all
        assert EncodedURL.from_text(f"https://{host}/p").to_uri().host == name


def test_validate_maps_forbidden_and_invalid_to_set_errors() -> None:
    """C-PS-3: a refused host is SetError forbidden with a description; one that does not
    normalise is invalidProperties naming url."""
    with pytest.raises(SetFailure) as forbidden:
        check_url(f"https://{FULLWIDTH_127}/", allow_private=False)
    assert forbidden.value.error["type"] == "forbidden"
    assert "127.0.0.1" in forbidden.value.error["description"]
    with pytest.raises(SetFailure) as invalid:
        check_url("https://%31%32%37.0.0.1/", allow_private=False)
    assert invalid.value.error["type"] == "invalidProperties"
    assert invalid.value.error["properties"] == ["url"]


def test_push_host_errors_are_value_errors() -> None:
    """InvalidHost is a ValueError (an invalid url), never a ForbiddenAddress."""
    with pytest.raises(InvalidHost):
        push_host("")
    assert issubclass(InvalidHost, ValueError)


def test_connect_time_guard_normalises_before_judging() -> None:
    """PS-18 at connect time: the guard normalises the agent's host as the create check
    does; local spellings are refused without a DNS query, and a name is resolved in its
    normal form."""
    factory, reactor, resolver = make_factory({"push.example.net": ["8.8.8.8"]})
    for uri in (b"https://LOCALHOST./", b"https://127.0.0.1./", b"https://0x7f.1/",
                b"https://a_b.example/"):
        assert failure_of(connect(factory, uri)).check(ForbiddenAddress), uri
    assert resolver.queries == []
    connect(factory, b"https://Push.Example.NET/p")
    assert resolver.queries == [("push.example.net", 443)]
    assert reactor.tcpClients[0][:2] == ("8.8.8.8", 443)


MakeWorld = Callable[..., Awaitable[PushWorld]]


@pytest_twisted.async_yield_fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PushWorld]:
    """A daemon with private push targets refused, and a push service that records."""
    w = await start_world(tmp_path, monkeypatch, FAST, None, False)
    await w.daemon.add_user("alice")
    yield w
    await w.close()


@pytest_twisted.ensureDeferred
async def test_fullwidth_digits_are_refused_by_push_subscription_set(world: PushWorld) -> None:
    """Defect 6 through the API: PushSubscription/set create with fullwidth digits,
    ideographic full stops or a legacy numeric form gets notCreated forbidden; a
    percent-encoded host gets invalidProperties [url]; nothing is ever sent."""
    forbidden = [FULLWIDTH_127, "127\u30020\u30020\u30021", "0x7f.1", "LOCALHOST."]
    create = {f"f{i}": {"deviceClientId": "d", "url": f"https://{host}/p"}
              for i, host in enumerate(forbidden)}
    create["bad"] = {"deviceClientId": "d", "url": "https://%31%32%37.0.0.1/p"}
    _, out = await world.call("PushSubscription/set", {"create": create},
                              basic("alice", "secret"))
    assert out["created"] is None
    for cid in create:
        error = out["notCreated"][cid]
        if cid == "bad":
            assert error["type"] == "invalidProperties" and error["properties"] == ["url"]
        else:
            assert error["type"] == "forbidden" and error["description"], (cid, error)
    assert world.service.received == []
