"""Fuzzing PushSubscription/get and /set (PS-1..PS-20, API-16..API-18, C-PS-1..C-PS-7):
every create and update argument (deviceClientId, url, keys, expires, types,
verificationCode, id, unknown properties; patch paths; creation-id references; destroy
lists). Every answer is a well-formed /get or /set response with typed SetErrors, and
nothing stored breaks the rules: https only, no IP literal outside the public ranges,
expires within [now, now + expires-max], at most 64 types."""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st

from jmappushd.transports.webpush.b64 import b64url_encode
from jmappushd.transports.webpush.ece import public_bytes
from jmappushd.transports.webpush.validate import format_utc, parse_utc
from tests.fuzz_support import (
    CORE,
    World,
    check_http,
    json_values,
    no_failures_logged,
    one_in,
    weighted,
)

NOW = 1_700_000_000
_KEY = public_bytes(ec.generate_private_key(ec.SECP256R1()).public_key())
GOOD_KEYS = {"p256dh": b64url_encode(_KEY), "auth": b64url_encode(b"0123456789abcdef")}
ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,254}$")
WIDE_DATE = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in "2024-01-01T00:00:00Z")
"""The same date in fullwidth digits, which ``\\d`` matches."""
UTC_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

hosts = st.one_of(
    st.sampled_from([
        "push.example.net", "push.example.net:8443", "[2001:4860:4860::8888]", "8.8.8.8",
        "10.0.0.1", "127.0.0.1", "127.1", "0x7f000001", "2130706433", "0177.0.0.1",
        "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]", "[fe80::1]", "[64:ff9b::a00:1]",
        "[2002:0a00:0001::]", "localhost", "LOCALHOST.", "a.localhost", "0.0.0.0",
        "push.example.net:0", "push.example.net:99999", "push.example.net:x", "",
        "bücher.example", "xn--bcher-kva.example", "%31%32%37.0.0.1", "[::]",
        "192.168.0.1.", "255.255.255.255", "100.64.0.1", "user@push.example.net",
        "push.example.net\\@evil", "[2001:db8::1]"]),
    st.text(max_size=20))
urls = weighted(
    (6, st.builds(lambda h, p: f"https://{h}/{p}", hosts, st.text(max_size=10))),
    (1, st.sampled_from(["http://push.example.net/", "HTTPS://push.example.net/",
                         "https:push.example.net", "//push.example.net/", "/relative",
                         "https://push.example.net/ x", "https://push.example.net/\x00",
                         "https://push.example.net/" + "a" * 3000, "https://", "",
                         "https:///path", "https://push.example.net#frag"])),
    (1, json_values))

keys = weighted(
    (3, st.just(GOOD_KEYS)), (2, st.none()),
    (1, st.fixed_dictionaries({"p256dh": st.sampled_from([
        GOOD_KEYS["p256dh"], GOOD_KEYS["p256dh"] + "==", GOOD_KEYS["p256dh"][:-2],
        b64url_encode(b"\x04" + b"\x01" * 64), b64url_encode(_KEY[1:]), "!!!", "",
        GOOD_KEYS["p256dh"].replace("-", "+")]), "auth": st.sampled_from([
        GOOD_KEYS["auth"], b64url_encode(b"short"), GOOD_KEYS["auth"] + "=", "a",
        b64url_encode(b"x" * 17)])})),
    (1, json_values),
    (1, st.fixed_dictionaries({"p256dh": st.just(GOOD_KEYS["p256dh"]),
                               "auth": st.just(GOOD_KEYS["auth"]), "extra": json_values})))

expires = weighted(
    (3, st.integers(-10**6, 10**9).map(lambda d: format_utc(NOW + d))),
    (1, st.integers(-10**6, 10**8).map(lambda d: format_utc(NOW + d)[:-1] + ".5Z")),
    (1, st.sampled_from(["2023-11-14T22:13:20z", "2023-02-30T00:00:00Z", "0000-01-01T00:00:00Z",
                         "9999-12-31T23:59:59Z", "2024-01-01T00:00:00", "2024-01-01",
                         WIDE_DATE, "2024-01-01T00:00:60Z",
                         "2024-13-01T00:00:00Z", "2024-01-01T00:00:00+00:00", "",
                         "1969-12-31T23:59:59Z", "2024-01-01T00:00:00." + "9" * 400 + "Z"])),
    (1, json_values), (1, st.none()))

types = weighted(
    (2, st.none()), (2, st.lists(st.sampled_from(["Email", "Mailbox", "PushSubscription"]),
                                max_size=3)),
    (1, st.lists(st.text(max_size=300), max_size=70)), (1, json_values))

create_objects = st.fixed_dictionaries(
    {}, optional={"deviceClientId": weighted((4, st.text(max_size=20)),
                                             (1, st.text(min_size=250, max_size=300)),
                                             (1, json_values)),
                  "url": urls, "keys": keys, "expires": expires, "types": types,
                  "verificationCode": weighted((3, st.none()), (1, json_values)),
                  "id": json_values, "colour": json_values})
required_create = st.builds(lambda obj, dev, url: {"deviceClientId": dev, "url": url, **obj},
                            create_objects, st.just("phone"), urls)

creation_ids = weighted((12, st.sampled_from(["k1", "k2", "k3"])), (1, st.text(max_size=8)))
patch_paths = weighted(
    (4, st.sampled_from(["expires", "types", "verificationCode"])),
    (2, st.sampled_from(["url", "keys", "id", "deviceClientId", "types/0", "expires/x",
                         "keys/auth", "colour", "", "/expires", "verificationCode/"])),
    (1, st.text(max_size=10)))
patch_values = weighted((2, expires), (2, types), (1, urls), (1, keys), (2, json_values))
patches = st.dictionaries(patch_paths, patch_values, max_size=3)
update_keys = weighted((12, st.sampled_from(["#good", "#k1", "#k2", "#nope", "Sunknown"])),
                       (1, st.sampled_from(["good", "#", "##good"])),
                       (1, st.text(max_size=8)))


@st.composite
def set_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Create (a known-good subscription "good" plus fuzzed ones), then update and
    destroy, possibly through ``#creationId`` references, then /get."""
    create = {"good": {"deviceClientId": "phone", "url": "https://push.example.net/good"}}
    create.update(draw(st.dictionaries(creation_ids, weighted(
        (10, required_create), (2, create_objects), (1, json_values)), max_size=3)))
    set_args: dict[str, Any] = {"create": create}
    update = draw(st.dictionaries(update_keys, weighted((12, patches), (1, json_values)),
                                  max_size=3))
    destroy = draw(weighted((12, st.lists(update_keys, max_size=3)), (1, json_values)))
    later: dict[str, Any] = {}
    empty_update: bool = draw(st.booleans())
    if update or empty_update:
        later["update"] = update
    if draw(st.booleans()):
        later["destroy"] = destroy
    if draw(one_in(10)):
        later[draw(st.sampled_from(["accountId", "ifInState", "colour"]))] = draw(json_values)
    get_args = draw(st.fixed_dictionaries({}, optional={
        "ids": weighted((4, st.none()),
                        (4, st.lists(st.sampled_from(["Sunknown", "#good"]), max_size=3)),
                        (1, json_values)),
        "properties": weighted((4, st.none()), (4, st.lists(st.sampled_from(
            ["id", "expires", "types", "verificationCode", "deviceClientId", "url", "keys",
             "colour"]), max_size=3)), (1, json_values))}))
    calls = [["PushSubscription/set", set_args, "s0"], ["PushSubscription/set", later, "s1"],
             ["PushSubscription/get", get_args, "g"]]
    if draw(st.booleans()):
        calls[1][1] = {"create": draw(st.dictionaries(creation_ids, create_objects,
                                                      max_size=2)), **later}
    request: dict[str, Any] = {"using": [CORE], "methodCalls": calls}
    if draw(st.booleans()):
        request["createdIds"] = {}
    return request


def literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """What a resolver would take ``host`` for, if it is an address (legacy forms too)."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, UnicodeEncodeError, ValueError):
        return None


def check_stored(world: World) -> None:
    """PS-1, PS-18, C-PS-1, C-PS-5: what /set stored keeps every rule."""
    now = world.clock.seconds()
    cap = world.app.config.push.expires_max
    stored = world.store.all_push_subscriptions()
    records: list[Any] = []
    stored.addCallback(records.extend)
    for record in records:
        assert record.url[:8].lower() == "https://", record.url  # the scheme is caseless
        host = urlsplit(record.url).hostname or ""
        address = literal(unicodedata.normalize("NFKC", host))
        assert address is None or address.is_global, record.url
        assert "localhost" not in host.lower(), record.url
        assert now < record.expires <= now + cap, (record.expires, now)
        assert record.types is None or len(record.types) <= 64, record.types
        assert len(record.device_client_id.encode("utf-8", "surrogatepass")) <= 255


@given(set_requests())
def test_set_and_get(request: dict[str, Any]) -> None:
    """API-17, API-18, PS-*: shapes, typed SetErrors, and the stored rules."""
    world = World()
    with no_failures_logged():
        body = check_http(world.api(request))
    responses = body["methodResponses"]
    for name, args, _ in responses:
        event(f"{name} {args.get('type', '')}")
        if name != "PushSubscription/set":
            continue
        for cid, created in (args["created"] or {}).items():
            assert ID.match(created["id"]) and UTC_DATE.match(created["expires"]), created
            assert created.get("verificationCode") is None  # PS-21
            assert body.get("createdIds", {}).get(cid, created["id"]) == created["id"]
        event(f"created {len(args['created'] or {})}")
        for error in (args["notCreated"] or {}).values():
            event(f"notCreated {error['type']}")
        for error in (args["notUpdated"] or {}).values():
            event(f"notUpdated {error['type']}")
        for updated in (args["updated"] or {}).values():
            assert updated is None or set(updated) <= {"expires"}, updated
    if responses[-1][0] == "PushSubscription/get":
        for obj in responses[-1][1]["list"]:
            assert "url" not in obj and "keys" not in obj  # PS-10
    check_stored(world)


def fullwidth(text: str, which: list[bool]) -> str:
    """``text`` with the chosen ASCII digits and dots replaced by their fullwidth or
    ideographic forms (which NFKC and IDNA map back to ASCII)."""
    out = []
    for ch, wide in zip(text, which + [False] * len(text), strict=False):
        if wide and ch.isdigit():
            out.append(chr(ord(ch) - ord("0") + 0xFF10))
        elif wide and ch == ".":
            out.append("\u3002")
        else:
            out.append(ch)
    return "".join(out)


@settings(max_examples=20, phases=(Phase.explicit, Phase.generate))
@given(address=st.sampled_from(["127.0.0.1", "10.0.0.1", "169.254.169.254", "192.168.1.1",
                                "0.0.0.0", "172.16.0.1"]),
       mask=st.integers(1, 2**15 - 1))
def test_fullwidth_digits_are_refused_at_create(address: str, mask: int) -> None:
    """PS-18, C-PS-3: a host that normalises (NFKC, IDNA) to a private address is refused
    at create like the ASCII form, with forbidden (or invalidProperties)."""
    host = fullwidth(address, [bool(mask >> i & 1) for i in range(15)])
    if host == address:
        return
    world = World()
    obj = {"deviceClientId": "phone", "url": f"https://{host}/p"}
    with no_failures_logged():
        body = check_http(world.api({"using": [CORE], "methodCalls": [
            ["PushSubscription/set", {"create": {"k": obj}}, "0"]]}))
    args = body["methodResponses"][0][1]
    assert args["created"] is None, (host, args)
    assert args["notCreated"]["k"]["type"] in ("forbidden", "invalidProperties"), args


def test_parse_utc_round_trip() -> None:
    """The strategy's dates are the daemon's format (a guard on the strategies above)."""
    assert parse_utc(format_utc(NOW)) == NOW
