"""JMAP over WebSocket against the in-process daemon, with a real Autobahn client on
127.0.0.1 (RFC 8887; checklist WS-*, SES-14, C-WS-*)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import ITCPTransport

from jmappushd.core.throttle import CoalescingThrottle
from jmappushd.jmap.registry import CORE_CAPABILITY, CallContext
from jmappushd.transports.websocket.protocol import JMAPWebSocketProtocol
from jmappushd.transports.websocket.push import PushSession
from jmappushd.transports.websocket.service import WEBSOCKET_CAPABILITY, WebSocketService
from tests.support import LiveDaemon, basic, make_config, start_daemon, stop_daemon
from tests.test_websocket_helpers import (
    CORE,
    Client,
    HandshakeRefused,
    basic_header,
    bearer_header,
    connect,
    echo,
    handshake_headers,
    raw_get,
    self_signed,
)

FAST = {"websocket": "ws-throttle = 0\nmax-connections-per-user = 3",
        "jmap": "max-size-request = 4000\nmax-concurrent-requests = 2"}


@asynccontextmanager
async def daemon(tmp_path: Path, sections: dict[str, str] | None = None
                 ) -> AsyncIterator[LiveDaemon]:
    d = await start_daemon(make_config(tmp_path, sections=FAST if sections is None else sections))
    try:
        yield d
    finally:
        await stop_daemon(d)


@pytest.fixture
def wsd(tmp_path: Path) -> Iterator[LiveDaemon]:
    """A daemon with no WebSocket throttle and small limits (see FAST)."""
    d = pytest_twisted.blockon(defer.ensureDeferred(start_daemon(make_config(tmp_path,
                                                                             sections=FAST))))
    yield d
    pytest_twisted.blockon(defer.ensureDeferred(stop_daemon(d)))


async def user(d: LiveDaemon, name: str = "alice") -> tuple[str, Client]:
    account = await d.add_user(name)
    return account, await connect(d.base, basic_header(name))


async def opened(d: LiveDaemon, token: str, name: str = "alice") -> int | None:
    """The position ``name``'s token stands for (tokens are sealed per user)."""
    found = await d.app.store.get_user(name)
    assert found is not None
    return d.app.hub.tokens.open(found.id, token)


# -- session and handshake --


@pytest_twisted.ensureDeferred
async def test_session_advertises_websocket(live: LiveDaemon) -> None:
    """SES-14, WS-1, WS-17, C-WS-9: the session lists urn:ietf:params:jmap:websocket with a ws://
    url (public-url is http here) for /jmap/ws and supportsPush as a JSON boolean true."""
    await live.add_user("alice")
    response = await treq.get(live.base + "/jmap/session", headers=basic("alice", "secret"))
    session = await response.json()
    value = session["capabilities"][WEBSOCKET_CAPABILITY]
    assert value == {"url": live.base.replace("http://", "ws://") + "/jmap/ws",
                     "supportsPush": True}


@pytest_twisted.ensureDeferred
async def test_handshake_selects_jmap(live: LiveDaemon) -> None:
    """WS-2, WS-5: an HTTP/1.1 upgrade offering jmap gets 101 with Sec-WebSocket-Protocol
    exactly "jmap"; a real client sees jmap selected among several offers."""
    await live.add_user("alice")
    status, headers, _ = await raw_get(live.base, handshake_headers(
        "chat, jmap", **basic_header("alice")))
    assert status == 101
    assert headers["sec-websocket-protocol"] == "jmap"
    client = await connect(live.base, basic_header("alice"), protocols=("chat", "jmap"))
    assert client.selected == "jmap"
    (server,) = live.service.transport(WebSocketService).factory.connections
    assert isinstance(server, JMAPWebSocketProtocol)  # an HTTP/1.1 upgrade, not h2
    # it, not twisted.web, is the producer now
    assert getattr(server.transport, "producer", None) is server
    await client.bye()


@pytest_twisted.ensureDeferred
async def test_handshake_without_jmap_is_refused(live: LiveDaemon) -> None:
    """C-WS-1, WS-5: offering only "chat", or no subprotocol, is refused with 400 and no
    upgrade; a real client's handshake fails."""
    await live.add_user("alice")
    for offer in ("chat", None):
        status, headers, body = await raw_get(
            live.base, handshake_headers(offer, **basic_header("alice")))
        assert status == 400
        assert "sec-websocket-accept" not in headers
        assert "jmap" in json.loads(body)["detail"]
    with pytest.raises(HandshakeRefused):
        await connect(live.base, basic_header("alice"), protocols=("chat",))


@pytest_twisted.ensureDeferred
async def test_handshake_requires_credentials(live: LiveDaemon) -> None:
    """WS-4: without credentials, or with a wrong password or unknown token, the
    handshake gets 401 with a WWW-Authenticate challenge before any upgrade."""
    await live.add_user("alice")
    for extra in ({}, basic_header("alice", "wrong"), bearer_header("jmp_nope")):
        status, headers, _ = await raw_get(live.base, handshake_headers(**extra))
        assert status == 401, extra
        assert headers["www-authenticate"].startswith("Basic realm=")
        assert "sec-websocket-accept" not in headers
    with pytest.raises(HandshakeRefused):
        await connect(live.base)


@pytest_twisted.ensureDeferred
async def test_bearer_and_access_token_authenticate(live: LiveDaemon) -> None:
    """WS-4: a Bearer header works, and so does the access_token query parameter for
    browsers (allow-access-token-query defaults to true)."""
    await live.add_user("alice")
    token = await live.add_token("alice")
    for client in (await connect(live.base, bearer_header(token)),
                   await connect(live.base, query=f"?access_token={token}")):
        client.send(echo(rid="a"))
        assert (await client.next())["requestId"] == "a"
        await client.bye()


@pytest_twisted.ensureDeferred
async def test_access_token_can_be_switched_off(tmp_path: Path) -> None:
    """WS-4: with allow-access-token-query = false the query parameter is ignored (401)."""
    async with daemon(tmp_path, {"auth": "allow-access-token-query = false"}) as d:
        await d.add_user("alice")
        token = await d.add_token("alice")
        status, _, _ = await raw_get(d.base, handshake_headers(),
                                     path=f"/jmap/ws?access_token={token}")
        assert status == 401


@pytest_twisted.ensureDeferred
async def test_origin_allow_list(tmp_path: Path) -> None:
    """WS-21: with allowed-origins set, a foreign Origin gets 403; a listed Origin and a
    client without Origin (not a browser) are upgraded."""
    sections = {"websocket": "allowed-origins = https://mail.example"}
    async with daemon(tmp_path, sections) as d:
        await d.add_user("alice")
        auth = basic_header("alice")
        status, _, _ = await raw_get(d.base, handshake_headers(Origin="https://evil.example",
                                                               **auth))
        assert status == 403
        for extra in ({"Origin": "https://mail.example"}, {}):
            status, _, _ = await raw_get(d.base, handshake_headers(**extra, **auth))
            assert status == 101


@pytest_twisted.ensureDeferred
async def test_not_a_websocket_request(live: LiveDaemon) -> None:
    """The endpoint answers a plain GET with 426 and a POST with 405, as problem details."""
    status, headers, _ = await raw_get(live.base, {})
    assert status == 426 and headers["upgrade"].lower() == "websocket"
    status, headers, _ = await raw_get(live.base, {"Content-Length": "0"}, method="POST")
    assert status == 405 and headers["allow"] == "GET"


@pytest_twisted.ensureDeferred
async def test_connection_limit_per_user(wsd: LiveDaemon) -> None:
    """max-connections-per-user: the fourth connection of a user (limit 3) gets 429 before
    any upgrade; other users are unaffected; closing one frees a slot."""
    await wsd.add_user("alice")
    await wsd.add_user("bob")
    clients = [await connect(wsd.base, basic_header("alice")) for _ in range(3)]
    status, _, _ = await raw_get(wsd.base, handshake_headers(**basic_header("alice")))
    assert status == 429
    bob = await connect(wsd.base, basic_header("bob"))
    await clients.pop().bye()
    clients.append(await connect(wsd.base, basic_header("alice")))
    for client in [*clients, bob]:
        await client.bye()


@pytest_twisted.ensureDeferred
async def test_permessage_deflate_declined_cleanly(live: LiveDaemon) -> None:
    """WS-23: an offer of permessage-deflate is declined (no extension header) and the
    upgrade still succeeds."""
    await live.add_user("alice")
    status, headers, _ = await raw_get(live.base, handshake_headers(
        **basic_header("alice"), **{"Sec-WebSocket-Extensions": "permessage-deflate"}))
    assert status == 101 and "sec-websocket-extensions" not in headers


@pytest_twisted.ensureDeferred
async def test_same_tls_listener(tmp_path: Path) -> None:
    """WS-1, WS-3 (listener side): on a TLS listener with an https public-url the session
    advertises wss://, and a wss:// client authenticates, gets Responses and pushes
    (the connection's flow control works on the TLS transport too)."""
    from jmappushd.config import parse_config
    from tests.support import free_port

    key, cert, pem = self_signed(tmp_path)
    port, admin = free_port(), free_port()
    text = (f"[server]\nlisten = ssl:{port}:interface=127.0.0.1:privateKey={key}:"
            f"certKey={cert}\npublic-url = https://127.0.0.1:{port}\n"
            f"state-dir = {tmp_path / 'state'}\n[admin]\n"
            f"listen = tcp:{admin}:interface=127.0.0.1\n[websocket]\nws-throttle = 0\n")
    d = await start_daemon(parse_config(text, str(tmp_path / "x.ini"), environ={}))
    try:
        account = await d.add_user("alice")
        base = f"https://127.0.0.1:{port}"
        client = await connect(base, basic_header("alice"), trust_pem=pem)
        assert d.app.urls.websocket == f"wss://127.0.0.1:{port}/jmap/ws"
        client.send({"@type": "WebSocketPushEnable"})
        client.send(echo(rid="tls"))
        assert (await client.next())["requestId"] == "tls"
        await d.publish({account: {"Email": "s1"}})
        assert (await client.next())["changed"] == {account: {"Email": "s1"}}
        await client.bye()
    finally:
        await stop_daemon(d)


# -- requests --


@pytest_twisted.ensureDeferred
async def test_request_response_with_and_without_id(live: LiveDaemon) -> None:
    """WS-13, WS-16: a Request with id "R1" gets a Response with requestId "R1"; one
    without id gets a Response without requestId; both carry the session state."""
    _, client = await user(live)
    client.send(echo(rid="R1", hello=True))
    response = await client.next()
    assert response["@type"] == "Response" and response["requestId"] == "R1"
    assert response["methodResponses"] == [["Core/echo", {"hello": True}, "c1"]]
    client.send(echo(call_id="c2", n=2))
    response = await client.next()
    assert "requestId" not in response
    assert response["methodResponses"] == [["Core/echo", {"n": 2}, "c2"]]
    session = await (await treq.get(live.base + "/jmap/session",
                                    headers=basic("alice", "secret"))).json()
    assert response["sessionState"] == session["state"]
    await client.bye()


@pytest_twisted.ensureDeferred
async def test_fragmented_message_is_reassembled(live: LiveDaemon) -> None:
    """WS-9: a Request split over several continuation frames is answered normally."""
    _, client = await user(live)
    client.sendMessage(json.dumps(echo(rid="frag", text="x" * 100)).encode(), fragmentSize=40)
    assert (await client.next())["requestId"] == "frag"
    await client.bye()


def install_slow(d: LiveDaemon) -> dict[str, defer.Deferred[None]]:
    """Register the test-only method Test/slow: it waits for gates[args["gate"]]."""
    gates: dict[str, defer.Deferred[None]] = {}

    async def slow(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        gate = gates.setdefault(args["gate"], defer.Deferred())
        await gate
        return {"gate": args["gate"]}

    d.app.registry.register("Test/slow", CORE_CAPABILITY, slow)
    return gates


def slow(gate: str, rid: str) -> dict[str, Any]:
    return {"@type": "Request", "id": rid, "using": [CORE],
            "methodCalls": [["Test/slow", {"gate": gate}, "s"]]}


@pytest_twisted.ensureDeferred
async def test_out_of_order_responses(live: LiveDaemon) -> None:
    """WS-14: a slow request R1 and a fast one R2 are both answered with their own
    requestId; R2 overtakes R1."""
    gates = install_slow(live)
    _, client = await user(live)
    client.send(slow("g1", "R1"))
    client.send(echo(rid="R2"))
    assert (await client.next())["requestId"] == "R2"
    gates["g1"].callback(None)
    first = await client.next()
    assert first["requestId"] == "R1"
    assert first["methodResponses"] == [["Test/slow", {"gate": "g1"}, "s"]]
    await client.bye()


@pytest_twisted.ensureDeferred
async def test_max_concurrent_requests_per_connection(wsd: LiveDaemon) -> None:
    """WS-15: with maxConcurrentRequests 2, a third request in flight gets RequestError
    limit/maxConcurrentRequests with its requestId; once one finishes, requests work."""
    gates = install_slow(wsd)
    _, client = await user(wsd)
    client.send(slow("a", "A"))
    client.send(slow("b", "B"))
    client.send(echo(rid="C"))
    error = await client.next()
    assert error["@type"] == "RequestError" and error["requestId"] == "C"
    assert error["type"] == "urn:ietf:params:jmap:error:limit"
    assert error["limit"] == "maxConcurrentRequests"
    gates["a"].callback(None)
    assert (await client.next())["requestId"] == "A"
    client.send(echo(rid="D"))
    assert (await client.next())["requestId"] == "D"
    gates["b"].callback(None)
    assert (await client.next())["requestId"] == "B"
    await client.bye()


@pytest_twisted.ensureDeferred
async def test_request_errors(wsd: LiveDaemon) -> None:
    """WS-11, WS-16, C-WS-3: notJSON (requestId null), non-object JSON and a missing or
    unknown @type (notRequest, requestId from a String id), unknownCapability with
    requestId "R2", and limit/maxCallsInRequest; all status 400 and the socket stays open."""
    _, client = await user(wsd)
    cases: list[tuple[bytes, str, str | None]] = [
        (b"The quick brown fox", "notJSON", None),
        (b"[1, 2]", "notRequest", None),
        (json.dumps({"using": [CORE], "methodCalls": [], "id": "X"}).encode(),
         "notRequest", "X"),
        (json.dumps({"@type": "Hello", "id": "Y"}).encode(), "notRequest", "Y"),
        (json.dumps({"@type": "Request", "id": "Z", "methodCalls": []}).encode(),
         "notRequest", "Z"),
        (json.dumps({"@type": "Request", "id": "R2", "using": [CORE, "urn:x"],
                     "methodCalls": []}).encode(), "unknownCapability", "R2"),
        (json.dumps({"@type": "Request", "id": "L", "using": [CORE],
                     "methodCalls": [["Core/echo", {}, str(i)] for i in range(17)]}).encode(),
         "limit", "L"),
    ]
    for payload, kind, request_id in cases:
        client.sendMessage(payload)
        error = await client.next()
        assert error["@type"] == "RequestError", payload
        assert error["type"] == "urn:ietf:params:jmap:error:" + kind, payload
        assert error["status"] == 400
        assert "requestId" in error and error["requestId"] == request_id, payload
    client.send(echo(rid="still-open"))
    assert (await client.next())["requestId"] == "still-open"
    await client.bye()


@pytest_twisted.ensureDeferred
async def test_oversize_messages(wsd: LiveDaemon) -> None:
    """C-WS-4, WS-22: above maxSizeRequest (4000) a message gets RequestError
    limit/maxSizeRequest and the socket stays open; above the hard cap (2 x) Autobahn
    closes with 1009."""
    _, client = await user(wsd)
    client.send(echo(rid="big", pad="x" * 5000))
    error = await client.next()
    assert error["type"] == "urn:ietf:params:jmap:error:limit"
    assert error["limit"] == "maxSizeRequest" and error["requestId"] is None
    client.send(echo(rid="ok"))
    assert (await client.next())["requestId"] == "ok"
    client.send(echo(rid="huge", pad="x" * 9000))
    code, _ = await client.wait_closed()
    assert code == 1009


@pytest_twisted.ensureDeferred
async def test_binary_frame_closes_1003(live: LiveDaemon) -> None:
    """WS-10, C-WS-2: a binary message closes the connection with 1003."""
    _, client = await user(live)
    client.sendMessage(b'{"@type":"Request"}', isBinary=True)
    code, _ = await client.wait_closed()
    assert code == 1003
    assert live.app.hub.listener_count == 0


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_closes_1007(live: LiveDaemon) -> None:
    """WS-12: a text frame with the bytes C3 28 fails the connection with 1007."""
    _, client = await user(live)
    client.sendFrame(opcode=1, payload=b"\xc3\x28")
    code, _ = await client.wait_closed()
    assert code == 1007


# -- push --


@pytest_twisted.ensureDeferred
async def test_push_enable_and_disable(wsd: LiveDaemon) -> None:
    """WS-18, WS-19, WS-20, SC-1: after WebSocketPushEnable a publish arrives as exactly
    {@type, changed, pushState}; after WebSocketPushDisable nothing arrives and Requests
    still work; disabling twice is harmless (C-WS-6)."""
    account, client = await user(wsd)
    client.send({"@type": "WebSocketPushEnable", "dataTypes": None})
    await client.nothing(0.05)
    published = await wsd.publish({account: {"Email": "s42"}})
    change = await client.next()
    assert change == {"@type": "StateChange", "changed": {account: {"Email": "s42"}},
                      "pushState": change["pushState"]}
    assert await opened(wsd, change["pushState"]) == published["seq"]
    client.send({"@type": "WebSocketPushDisable"})
    client.send({"@type": "WebSocketPushDisable"})
    client.send(echo(rid="sync"))
    assert (await client.next())["requestId"] == "sync"
    await wsd.publish({account: {"Email": "s43"}})
    await client.nothing()
    assert wsd.app.hub.listener_count == 0
    await client.bye()


@pytest_twisted.ensureDeferred
async def test_data_types_filter(wsd: LiveDaemon) -> None:
    """WS-18: with dataTypes ["Mailbox"], an Email change sends nothing and a change of
    Email and Mailbox sends only Mailbox; a missing dataTypes means all (C-WS-7)."""
    account, client = await user(wsd)
    other = await connect(wsd.base, basic_header("alice"))
    client.send({"@type": "WebSocketPushEnable", "dataTypes": ["Mailbox"]})
    other.send({"@type": "WebSocketPushEnable"})
    client.send(echo(rid="sync"))
    other.send(echo(rid="sync"))
    await client.next()
    await other.next()
    await wsd.publish({account: {"Email": "e1"}})
    assert (await other.next())["changed"] == {account: {"Email": "e1"}}
    await client.nothing()
    await wsd.publish({account: {"Email": "e2", "Mailbox": "m1"}})
    assert (await client.next())["changed"] == {account: {"Mailbox": "m1"}}
    assert (await other.next())["changed"] == {account: {"Email": "e2", "Mailbox": "m1"}}
    await client.bye()
    await other.bye()


@pytest_twisted.ensureDeferred
async def test_second_enable_replaces_the_first(wsd: LiveDaemon) -> None:
    """C-WS-6: a second WebSocketPushEnable replaces dataTypes (one subscription, not two)."""
    account, client = await user(wsd)
    client.send({"@type": "WebSocketPushEnable", "dataTypes": ["Email"]})
    client.send({"@type": "WebSocketPushEnable", "dataTypes": ["Mailbox"]})
    client.send(echo(rid="sync"))
    await client.next()
    assert wsd.app.hub.listener_count == 1
    await wsd.publish({account: {"Email": "e1"}})
    await wsd.publish({account: {"Mailbox": "m1"}})
    assert (await client.next())["changed"] == {account: {"Mailbox": "m1"}}
    await client.nothing()
    await client.bye()


@pytest_twisted.ensureDeferred
async def test_account_isolation(wsd: LiveDaemon) -> None:
    """Isolation: each user receives only the accounts it may read, also from a change that
    names several accounts."""
    a_acc, alice = await user(wsd, "alice")
    b_acc, bob = await user(wsd, "bob")
    for client in (alice, bob):
        client.send({"@type": "WebSocketPushEnable"})
        client.send(echo(rid="sync"))
        await client.next()
    await wsd.publish({b_acc: {"Email": "b1"}})
    assert (await bob.next())["changed"] == {b_acc: {"Email": "b1"}}
    await alice.nothing()
    await wsd.publish({a_acc: {"Email": "a2"}, b_acc: {"Email": "b2"}})
    assert (await alice.next())["changed"] == {a_acc: {"Email": "a2"}}
    assert (await bob.next())["changed"] == {b_acc: {"Email": "b2"}}
    await alice.bye()
    await bob.bye()


async def _push_state_after(d: LiveDaemon, account: str) -> str:
    client = await connect(d.base, basic_header("alice"))
    client.send({"@type": "WebSocketPushEnable"})
    client.send(echo(rid="sync"))
    await client.next()
    await d.publish({account: {"Email": "s1", "Mailbox": "m1"}})
    state = (await client.next())["pushState"]
    await client.bye()
    return str(state)


async def _resume(d: LiveDaemon, push_state: str) -> dict[str, Any]:
    client = await connect(d.base, basic_header("alice"))
    client.send({"@type": "WebSocketPushEnable", "pushState": push_state})
    change = await client.next()
    await client.nothing(0.1)
    await client.bye()
    return change


@pytest_twisted.ensureDeferred
async def test_push_state_resumption(wsd: LiveDaemon) -> None:
    """WS-19: StateChange with pushState P; close; publish X; reconnect and enable with P
    → an immediate StateChange containing exactly X. C-WS-8: an unknown pushState gives the
    full current state with a fresh pushState."""
    account = await wsd.add_user("alice")
    push_state = await _push_state_after(wsd, account)
    published = await wsd.publish({account: {"Email": "s2"}})
    change = await _resume(wsd, push_state)
    assert change["changed"] == {account: {"Email": "s2"}}
    assert await opened(wsd, change["pushState"]) == published["seq"]
    full = await _resume(wsd, "nonsense-token")
    assert full["changed"] == {account: {"Email": "s2", "Mailbox": "m1"}}
    assert await opened(wsd, full["pushState"]) == published["seq"]


@pytest_twisted.ensureDeferred
async def test_push_state_resumption_across_restart(tmp_path: Path) -> None:
    """WS-19: a pushState from before a daemon restart still resumes exactly what changed
    since it (tokens are durable)."""
    config = make_config(tmp_path, sections=FAST)
    d = await start_daemon(config)
    try:
        account = await d.add_user("alice")
        push_state = await _push_state_after(d, account)
    finally:
        await stop_daemon(d)
    # treq's global pool would reuse a keep-alive connection to the stopped daemon.
    from treq.api import get_global_pool

    if get_global_pool() is not None:
        await get_global_pool().closeCachedConnections()
    d = await start_daemon(config)
    try:
        await d.publish({account: {"Mailbox": "m2"}})
        change = await _resume(d, push_state)
        assert change["changed"] == {account: {"Mailbox": "m2"}}
    finally:
        await stop_daemon(d)


# -- credentials, shutdown, lifecycle --


@pytest_twisted.ensureDeferred
async def test_revoked_credentials_close_1008(live: LiveDaemon) -> None:
    """WS-6, C-WS-5: revoking the token a connection used, or removing the user, closes
    the socket with 1008 once the auth layer reports the change."""
    await live.add_user("alice")
    await live.add_user("bob")
    token = await live.add_token("alice")
    by_token = await connect(live.base, bearer_header(token))
    bob = await connect(live.base, basic_header("bob"))
    by_password = await connect(live.base, basic_header("alice"))
    (record,) = await live.app.store.list_tokens("alice")
    await live.app.store.revoke_token(record.id)
    await live.app.auth.check_generation()
    assert (await by_token.wait_closed())[0] == 1008
    await live.app.store.remove_user("bob")
    await live.app.auth.check_generation()
    assert (await bob.wait_closed())[0] == 1008
    by_password.send(echo(rid="alive"))
    assert (await by_password.next())["requestId"] == "alive"
    await by_password.bye()


@pytest_twisted.ensureDeferred
async def test_grants_are_refreshed(wsd: LiveDaemon) -> None:
    """A grant given while connected takes effect on the live socket: pushes for the newly
    readable account arrive after the auth layer reports the change."""
    _, alice = await user(wsd, "alice")
    b_acc = await wsd.add_user("bob")
    alice.send({"@type": "WebSocketPushEnable"})
    await wsd.app.store.grant("alice", b_acc)
    await wsd.app.auth.check_generation()
    alice.send(echo(rid="sync"))
    await alice.next()
    await wsd.publish({b_acc: {"Email": "b1"}})
    assert (await alice.next())["changed"] == {b_acc: {"Email": "b1"}}
    await alice.bye()


@pytest_twisted.ensureDeferred
async def test_shutdown_closes_with_1001(tmp_path: Path) -> None:
    """Daemon shutdown closes every connection with 1001 (going away), leaves no hub
    listeners and no connections, and stops the Autobahn factory."""
    d = await start_daemon(make_config(tmp_path, sections=FAST))
    stopped = False
    try:
        await d.add_user("alice")
        clients = [await connect(d.base, basic_header("alice")) for _ in range(2)]
        for client in clients:
            client.send({"@type": "WebSocketPushEnable"})
        await clients[0].nothing(0.05)
        assert d.app.hub.listener_count == 2
        await stop_daemon(d)
        stopped = True
        for client in clients:
            assert (await client.wait_closed())[0] == 1001
        assert d.app.hub.listener_count == 0
        factory = d.service.transport(WebSocketService).factory
        assert not factory.connections
        assert factory.numPorts == 0  # the service stopped the factory it started
    finally:
        if not stopped:
            await stop_daemon(d)


@pytest_twisted.ensureDeferred
async def test_many_connect_disconnect_cycles_leave_nothing(wsd: LiveDaemon) -> None:
    """1,000 real connect/enable/disconnect cycles leave no hub listeners, no registered
    connections and no timers owned by WebSocket objects on the reactor."""
    from twisted.internet import reactor

    await wsd.add_user("alice")
    factory = wsd.service.transport(WebSocketService).factory
    for i in range(1000):
        client = await connect(wsd.base, basic_header("alice"))
        client.send({"@type": "WebSocketPushEnable"})
        if i % 2:
            # half of them vanish without a Close
            cast(ITCPTransport, client.transport).abortConnection()
            await client.wait_closed()
        else:
            await client.bye()
    await _settle(factory)
    assert wsd.app.hub.listener_count == 0
    assert not factory.connections and factory.registry.count == 0
    # The real reactor's calls are DelayedCalls, which name their func.
    calls = cast(list[DelayedCall], reactor.getDelayedCalls())
    owners = [getattr(c.func, "__self__", None) for c in calls]
    ours = (JMAPWebSocketProtocol, CoalescingThrottle, PushSession)
    assert not [o for o in owners if isinstance(o, ours)]


async def _settle(factory: Any) -> None:
    """Wait (briefly, on the reactor) for the server side of the last closes."""
    from twisted.internet import reactor, task

    for _ in range(100):
        if not factory.connections:
            return
        await task.deferLater(reactor, 0.02, lambda: None)
