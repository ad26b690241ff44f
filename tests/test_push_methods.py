"""PushSubscription/get and /set over HTTP against a real push service (PS-*, API-16/17).

Each test runs an in-process daemon (``allow-private-urls`` on unless stated) and the TLS
push service of ``tests.push_receiver`` on 127.0.0.1, which decrypts with http_ece.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from jmappushd.transports.webpush.b64 import b64url_encode
from jmappushd.transports.webpush.service import WebPushService
from jmappushd.transports.webpush.validate import parse_utc
from tests.push_receiver import FAST, PushWorld, start_world
from tests.support import basic, bearer

UTC_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,254}$")
ALICE = basic("alice", "secret")
MakeWorld = Callable[..., Awaitable[PushWorld]]
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


@pytest_twisted.async_yield_fixture
async def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> AsyncIterator[MakeWorld]:
    """Start one daemon + push service with a given config; both stopped after the test."""
    worlds: list[PushWorld] = []

    async def make(extra: str = FAST, sections: dict[str, str] | None = None,
                   allow_private: bool = True) -> PushWorld:
        world = await start_world(tmp_path, monkeypatch, extra, sections, allow_private)
        worlds.append(world)
        await world.daemon.add_user("alice")
        return world

    yield make
    for world in worlds:
        await world.close()
        assert world.service.errors == []


@pytest_twisted.ensureDeferred
async def test_get_shape_and_defaults(make_world: MakeWorld) -> None:
    """PS-9, PS-10: /get has list and notFound, no accountId or state; objects carry id,
    deviceClientId, verificationCode, expires and types only."""
    w = await make_world()
    sub_id = await w.create(ALICE)
    name, out = await w.call("PushSubscription/get", {"ids": None}, ALICE)
    assert name == "PushSubscription/get"
    assert set(out) == {"list", "notFound"} and out["notFound"] == []
    [obj] = out["list"]
    assert set(obj) == {"id", "deviceClientId", "verificationCode", "expires", "types"}
    assert obj["id"] == sub_id and obj["deviceClientId"] == "phone"
    assert obj["verificationCode"] is None and obj["types"] is None  # PS-21
    _, out = await w.call("PushSubscription/get",
                          {"ids": [sub_id, "nope", "nope"], "properties": ["types"]}, ALICE)
    assert out == {"list": [{"id": sub_id, "types": None}], "notFound": ["nope"]}


@pytest_twisted.ensureDeferred
async def test_get_argument_errors(make_world: MakeWorld) -> None:
    """PS-10, API-11, C-API-4: url/keys in properties → forbidden; unknown property, accountId,
    a non-array ids → invalidArguments."""
    w = await make_world()
    for props in (["url"], ["keys", "id"]):
        assert await w.call("PushSubscription/get", {"properties": props}, ALICE) == (
            "error", {"type": "forbidden",
                      "description": "url and keys are never returned (RFC 8620 §7.2.1)."})
    for args in ({"properties": ["colour"]}, {"accountId": "a"}, {"ids": "x"}):
        name, out = await w.call("PushSubscription/get", args, ALICE)
        assert (name, out["type"]) == ("error", "invalidArguments"), args


@pytest_twisted.ensureDeferred
async def test_create_response_and_verification(make_world: MakeWorld) -> None:
    """PS-11, PS-13, PS-17, SC-3, C-PS-1, C-PS-10, PS-21, API-19: created has id, expires
    (now + 7 days by default) and nulls, never the code; the push service gets exactly one
    encrypted, VAPID-signed PushVerification whose id matches."""
    w = await make_world()
    obj = {"deviceClientId": "phone", "url": w.receiver.url("/v")}
    _, out = await w.call("PushSubscription/set", {"create": {"c1": obj}}, ALICE)
    assert set(out) == {"created", "updated", "destroyed", "notCreated", "notUpdated",
                        "notDestroyed"}
    created = out["created"]["c1"]
    assert set(created) == {"id", "expires", "keys", "types", "verificationCode"}
    assert created["keys"] is None and created["types"] is None
    assert created["verificationCode"] is None
    assert ID.match(created["id"]) and UTC_DATE.match(created["expires"])
    assert abs(parse_utc(created["expires"]) - (time.time() + 7 * 86400)) < 60
    [got] = await w.service.wait_count("/v", 1)
    assert set(got.message) == {"@type", "pushSubscriptionId", "verificationCode"}
    assert got.message["@type"] == "PushVerification"
    assert got.message["pushSubscriptionId"] == created["id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", got.message["verificationCode"])
    assert got.header("content-encoding") is None and got.header("ttl") == "86400"
    assert got.header("topic") is None
    _, listed = await w.call("PushSubscription/get", {}, ALICE)
    assert listed["list"][0]["verificationCode"] is None


@pytest_twisted.ensureDeferred
async def test_verification_flow(make_world: MakeWorld) -> None:
    """PS-14, PS-15, PS-2, PS-24, VAPID-12: a wrong code is invalidProperties, the right one
    verifies; then a publish arrives as an encrypted StateChange signed with the session key."""
    w = await make_world()
    account = (await w.daemon.app.store.get_user("alice")).primary_account_id
    sub_id = await w.create(ALICE)
    await w.service.wait_count("/sub", 1)
    await w.daemon.publish({account: {"Email": "before"}})
    _, out = await w.call("PushSubscription/set",
                          {"update": {sub_id: {"verificationCode": "wrong"}}}, ALICE)
    assert out["notUpdated"][sub_id]["type"] == "invalidProperties"
    assert out["notUpdated"][sub_id]["properties"] == ["verificationCode"]
    assert len(w.service.on("/sub")) == 1  # nothing but the verification so far
    await w.verify(sub_id, ALICE)
    _, listed = await w.call("PushSubscription/get", {}, ALICE)
    code = w.service.on("/sub")[0].message["verificationCode"]
    assert listed["list"][0]["verificationCode"] == code
    await w.daemon.publish({account: {"Email": "s42"}})
    [_, change] = await w.service.wait_count("/sub", 2)
    assert change.message == {"@type": "StateChange", "changed": {account: {"Email": "s42"}}}
    assert change.header("content-encoding") == "aes128gcm"
    session = w.daemon.app.session_for(await w.daemon.app.auth.login(_creds("alice")))
    key = session["capabilities"]["urn:ietf:params:jmap:webpush-vapid"]["applicationServerKey"]
    authorization = change.header("authorization")
    assert authorization is not None and authorization.endswith("k=" + key)


def _creds(name: str) -> Any:
    from twisted.cred.credentials import UsernamePassword

    return UsernamePassword(name.encode(), b"secret")


@pytest_twisted.ensureDeferred
async def test_create_validation(make_world: MakeWorld) -> None:
    """PS-1, PS-2, PS-3, PS-12, PS-20, C-PS-4, C-PS-5, C-PS-1: each bad create fails alone
    with the right SetError; padded base64url keys are accepted."""
    w = await make_world()
    url = w.receiver.url("/x")
    agent = w.service.agent("/x")
    good = {"deviceClientId": "d", "url": url}
    padded = {k: v + "=" * (-len(v) % 4) for k, v in agent.keys.items()}
    past = datetime.fromtimestamp(time.time() - 10, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cases: dict[str, tuple[dict[str, Any], str, list[str] | None]] = {
        "http": ({**good, "url": "http://127.0.0.1/x"}, "invalidProperties", ["url"]),
        "relative": ({**good, "url": "/push/x"}, "invalidProperties", ["url"]),
        "huge": ({**good, "url": url + "/" + "a" * 10_000}, "tooLarge", ["url"]),
        "offcurve": ({**good, "keys": {"p256dh": b64url_encode(b"\x04" + b"\x01" * 64),
                                       "auth": agent.keys["auth"]}},
                     "invalidProperties", ["keys"]),
        "shortkey": ({**good, "keys": {"p256dh": agent.keys["p256dh"][:40],
                                       "auth": agent.keys["auth"]}},
                     "invalidProperties", ["keys"]),
        "auth15": ({**good, "keys": {"p256dh": agent.keys["p256dh"],
                                     "auth": b64url_encode(b"x" * 15)}},
                   "invalidProperties", ["keys"]),
        "code": ({**good, "verificationCode": "abc"}, "invalidProperties",
                 ["verificationCode"]),
        "id": ({**good, "id": "Sx"}, "invalidProperties", ["id"]),
        "unknown": ({**good, "colour": "red"}, "invalidProperties", ["colour"]),
        "nodevice": ({"url": url}, "invalidProperties", ["deviceClientId"]),
        "device": ({**good, "deviceClientId": "d" * 256}, "tooLarge", ["deviceClientId"]),
        "types": ({**good, "types": [f"T{i}" for i in range(65)]}, "tooLarge", ["types"]),
        "typesbad": ({**good, "types": "Email"}, "invalidProperties", ["types"]),
        "past": ({**good, "expires": past}, "invalidProperties", ["expires"]),
        "badtime": ({**good, "expires": "tomorrow"}, "invalidProperties", ["expires"]),
    }
    create = {cid: obj for cid, (obj, _, _) in cases.items()}
    create["ok"] = {**good, "keys": padded, "types": ["Email", "Email", "Mailbox"]}
    _, out = await w.call("PushSubscription/set", {"create": create}, ALICE)
    assert set(out["created"]) == {"ok"}
    for cid, (_, kind, props) in cases.items():
        assert out["notCreated"][cid]["type"] == kind, (cid, out["notCreated"][cid])
        assert out["notCreated"][cid].get("properties") == props, cid
    _, got = await w.call("PushSubscription/get", {}, ALICE)
    assert got["list"][0]["types"] == ["Email", "Mailbox"]


@pytest_twisted.ensureDeferred
async def test_expires_clamped_on_create_and_update(make_world: MakeWorld) -> None:
    """PS-5, PS-16, C-PS-1: a far-future expires is cut to the cap (7 days) in created and in
    updated; a shorter one is kept; the subscription stays verified."""
    w = await make_world()
    account = (await w.daemon.app.store.get_user("alice")).primary_account_id
    year = datetime.fromtimestamp(time.time() + 365 * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _, out = await w.call("PushSubscription/set", {"create": {"c": {
        "deviceClientId": "d", "url": w.receiver.url("/sub"), "expires": year,
        "keys": w.service.agent("/sub").keys}}}, ALICE)
    cap = parse_utc(out["created"]["c"]["expires"])
    assert abs(cap - (time.time() + 7 * 86400)) < 60
    assert cap - time.time() >= 48 * 3600
    sub_id = out["created"]["c"]["id"]
    await w.verify(sub_id, ALICE)
    _, out = await w.call("PushSubscription/set", {"update": {sub_id: {"expires": year}}}, ALICE)
    assert abs(parse_utc(out["updated"][sub_id]["expires"]) - cap) < 60
    soon = datetime.fromtimestamp(time.time() + 3 * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _, out = await w.call("PushSubscription/set", {"update": {sub_id: {"expires": soon}}}, ALICE)
    assert out["updated"] == {sub_id: None}
    _, got = await w.call("PushSubscription/get", {}, ALICE)
    assert got["list"][0]["expires"] == soon
    await w.daemon.publish({account: {"Email": "still"}})
    await w.service.wait_count("/sub", 2)


@pytest_twisted.ensureDeferred
async def test_update_rules(make_world: MakeWorld) -> None:
    """PS-12, API-17, PS-20: immutable properties only with their current value, invalidPatch
    for paths inside, willDestroy with a destroy of the same id, types can change."""
    w = await make_world()
    sub_id = await w.create(ALICE)
    url = w.receiver.url("/sub")
    _, out = await w.call("PushSubscription/set", {"update": {
        sub_id: {"id": sub_id, "url": url, "deviceClientId": "phone", "types": ["Email"]}}},
        ALICE)
    assert out["updated"] == {sub_id: None}
    for patch, kind, props in (
            ({"url": url + "x"}, "invalidProperties", ["url"]),
            ({"keys": None}, "invalidProperties", ["keys"]),
            ({"id": "Sother"}, "invalidProperties", ["id"]),
            ({"deviceClientId": "other"}, "invalidProperties", ["deviceClientId"]),
            ({"types/0": "Mailbox"}, "invalidPatch", None),
            ({"nonsense": 1}, "invalidProperties", ["nonsense"])):
        _, out = await w.call("PushSubscription/set", {"update": {sub_id: patch}}, ALICE)
        assert out["notUpdated"][sub_id]["type"] == kind, patch
        assert out["notUpdated"][sub_id].get("properties") == props, patch
    _, out = await w.call("PushSubscription/set",
                          {"update": {sub_id: {"types": None}}, "destroy": [sub_id]}, ALICE)
    assert out["notUpdated"][sub_id]["type"] == "willDestroy"
    assert out["destroyed"] == [sub_id]
    _, out = await w.call("PushSubscription/get", {"ids": [sub_id]}, ALICE)
    assert out == {"list": [], "notFound": [sub_id]}


@pytest_twisted.ensureDeferred
async def test_creation_ids_and_set_limits(make_world: MakeWorld) -> None:
    """API-13, API-17, PS-11: #creationId works in update and destroy, createdIds is echoed
    when sent, no accountId/oldState/newState; over maxObjectsInSet → requestTooLarge;
    unknown argument → invalidArguments; unknown id → notFound."""
    w = await make_world(sections={"jmap": "max-objects-in-set = 4"})
    obj = {"deviceClientId": "d", "url": w.receiver.url("/a")}
    response = await w.jmap([["PushSubscription/set", {
        "create": {"n1": obj}, "update": {"#n1": {"types": ["Mailbox"]}},
        "destroy": ["#n1", "Sunknown"]}, "0"]], ALICE, createdIds={"k": "X1"})
    [[_, out, _]] = response["methodResponses"]
    new_id = out["created"]["n1"]["id"]
    assert response["createdIds"] == {"k": "X1", "n1": new_id}
    assert out["notUpdated"] == {"#n1": {"type": "willDestroy"}}
    assert out["destroyed"] == ["#n1"]
    assert out["notDestroyed"] == {"Sunknown": {"type": "notFound"}}
    assert not {"accountId", "oldState", "newState"} & set(out)
    name, out = await w.call("PushSubscription/set",
                             {"destroy": ["a1", "a2", "a3", "a4", "a5"]}, ALICE)
    assert (name, out["type"]) == ("error", "requestTooLarge")
    for args in ({"accountId": "x"}, {"ifInState": "x"}):
        name, out = await w.call("PushSubscription/set", args, ALICE)
        assert (name, out["type"]) == ("error", "invalidArguments")
    _, out = await w.call("PushSubscription/set", {"update": {"Snope": {"types": None}}}, ALICE)
    assert out["notUpdated"] == {"Snope": {"type": "notFound"}}


@pytest_twisted.ensureDeferred
async def test_credentials_own_subscriptions(make_world: MakeWorld) -> None:
    """PS-7, C-PS-7: another token of the same user or another user sees notFound for every
    operation; revoking the creating token destroys the subscription and stops pushes."""
    w = await make_world()
    account = (await w.daemon.app.store.get_user("alice")).primary_account_id
    await w.daemon.add_user("bob")
    t1 = bearer(await w.daemon.add_token("alice"))
    t2 = bearer(await w.daemon.add_token("alice"))
    sub_id = await w.create(t1)
    await w.verify(sub_id, t1)
    for other in (t2, ALICE, basic("bob", "secret")):
        _, out = await w.call("PushSubscription/get", {"ids": [sub_id]}, other)
        assert out == {"list": [], "notFound": [sub_id]}
        _, out = await w.call("PushSubscription/get", {}, other)
        assert out["list"] == []
        _, out = await w.call("PushSubscription/set", {
            "update": {sub_id: {"types": None}}, "destroy": [sub_id]}, other)
        assert out["notUpdated"] == {sub_id: {"type": "notFound"}}
        assert out["notDestroyed"] == {sub_id: {"type": "notFound"}}
    token = (await w.daemon.app.store.list_tokens("alice"))[0]
    await w.daemon.app.store.revoke_token(token.id)
    await w.daemon.app.auth.check_generation()
    runtime = w.daemon.service.transport(WebPushService).runtime
    if runtime.delivery._refreshing is not None:
        await runtime.delivery._refreshing
    assert runtime.delivery.get(sub_id) is None
    await w.daemon.publish({account: {"Email": "after-revoke"}})
    _, out = await w.call("PushSubscription/get", {"ids": [sub_id]}, t2)
    assert out["notFound"] == [sub_id]
    assert len(w.service.on("/sub")) == 1


@pytest_twisted.ensureDeferred
async def test_over_quota_counts_every_credential(make_world: MakeWorld) -> None:
    """PS-19: push-max-total counts all the user's credentials; overQuota names the limit."""
    w = await make_world(FAST + "push-max-total = 2\n")
    token = bearer(await w.daemon.add_token("alice"))
    await w.create(ALICE, "/1")
    await w.create(token, "/2")
    _, out = await w.call("PushSubscription/set", {"create": {"c": {
        "deviceClientId": "d", "url": w.receiver.url("/3")}}}, ALICE)
    error = out["notCreated"]["c"]
    assert error["type"] == "overQuota" and "push-max-total" in error["description"]
    assert "2" in error["description"]


@pytest_twisted.ensureDeferred
async def test_creation_rate_limit(make_world: MakeWorld) -> None:
    """PS-19: a burst of creations over create-rate per minute gets rateLimit."""
    w = await make_world(FAST.replace("create-rate = 1000", "create-rate = 2"))
    obj = {"deviceClientId": "d", "url": w.receiver.url("/r")}
    _, out = await w.call("PushSubscription/set",
                          {"create": {"a": obj, "b": obj, "c": obj}}, ALICE)
    assert set(out["created"]) == {"a", "b"}
    assert out["notCreated"]["c"]["type"] == "rateLimit"
    await w.service.wait_count("/r", 2)


@pytest_twisted.ensureDeferred
async def test_ssrf_refused_at_create(make_world: MakeWorld) -> None:
    """PS-18, C-PS-3: with allow-private-urls off, every non-public address class and
    localhost are refused at create with SetError forbidden (and a description)."""
    w = await make_world(allow_private=False)
    hosts = ["127.0.0.1", "[::1]", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
             "[fc00::1]", "[fe80::1]", "224.0.0.1", "100.64.0.1", "0.0.0.0", "localhost",
             "[::ffff:127.0.0.1]", "2130706433"]
    create = {f"c{i}": {"deviceClientId": "d", "url": f"https://{host}/p"}
              for i, host in enumerate(hosts)}
    _, out = await w.call("PushSubscription/set", {"create": create}, ALICE)
    assert out["created"] is None
    for cid in create:
        assert out["notCreated"][cid]["type"] == "forbidden", (cid, out["notCreated"][cid])
        assert out["notCreated"][cid]["description"]
    assert w.service.received == []


@pytest_twisted.ensureDeferred
async def test_session_advertises_vapid_key(make_world: MakeWorld) -> None:
    """SES-15, VAPID-11: the session has the webpush-vapid capability with an 87-character
    unpadded base64url P-256 point; it is the same after a restart (persisted key)."""
    w = await make_world()
    import treq

    response = await treq.get(w.daemon.base + "/jmap/session", headers=ALICE)
    session = await response.json()
    key = session["capabilities"]["urn:ietf:params:jmap:webpush-vapid"]["applicationServerKey"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{87}", key)
    stored = await w.daemon.app.store.get_meta("vapid.private_key")
    from jmappushd.transports.webpush.vapid import VapidKey

    assert VapidKey.from_private_string(stored).public_key_b64 == key
