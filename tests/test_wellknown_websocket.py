"""RFC 8307: the RFC 8887 WebSocket handshake at ``/.well-known/jmap`` over HTTP/1.1.

Three independent clients (the project's Autobahn client, ``websockets`` and
``websocket-client``) open ``ws://host/.well-known/jmap`` with subprotocol ``jmap``
and get the very session of ``/jmap/ws``; a plain GET there keeps its 307 to the
session (SES-2, C-SES-1), and the session still advertises ``/jmap/ws`` (WS-1).
Checklist: WKU-1, WS-2, WS-4, WS-5, C-WS-1.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
import treq
import websocket as websocket_client
from twisted.internet import threads
from websockets.sync.client import connect as websockets_connect

from jmappushd.transports.websocket.service import WEBSOCKET_CAPABILITY, WebSocketService
from tests.support import LiveDaemon, basic
from tests.test_websocket_helpers import (
    CORE,
    basic_header,
    connect,
    echo,
    handshake_headers,
    raw_get,
)

WELL_KNOWN = "/.well-known/jmap"
PUSH_ENABLE = {"@type": "WebSocketPushEnable", "dataTypes": None}


def ws_url(d: LiveDaemon) -> str:
    return d.base.replace("http://", "ws://") + WELL_KNOWN


@pytest_twisted.ensureDeferred
async def test_autobahn_client_at_well_known(live: LiveDaemon) -> None:
    """WKU-1, WS-2: the Autobahn client's handshake at /.well-known/jmap selects jmap and
    runs the same session: Core/echo answers, push enable then a publish gives a
    StateChange with pushState, and the connection counts as one of /jmap/ws's."""
    account = await live.add_user("alice")
    client = await connect(live.base, basic_header("alice"), path=WELL_KNOWN)
    assert client.selected == "jmap"
    assert len(live.service.transport(WebSocketService).factory.connections) == 1
    client.send(echo(rid="r1", hello="world"))
    response = await client.next()
    assert response["@type"] == "Response" and response["requestId"] == "r1"
    assert response["methodResponses"] == [["Core/echo", {"hello": "world"}, "c1"]]
    client.send(PUSH_ENABLE)
    await live.publish({account: {"Email": "s1"}})
    change = await client.next()
    assert change["@type"] == "StateChange"
    assert change["changed"] == {account: {"Email": "s1"}}
    assert isinstance(change["pushState"], str)
    await client.bye()


def _websockets_echo(url: str, auth: str) -> tuple[str | None, dict[str, Any]]:
    with websockets_connect(url, subprotocols=["jmap"],  # type: ignore[list-item]
                            additional_headers={"Authorization": auth},
                            open_timeout=10) as ws:
        ws.send(json.dumps(echo(rid="w1", via="websockets")))
        reply = json.loads(ws.recv(timeout=10))
        return ws.subprotocol, reply


@pytest_twisted.ensureDeferred
async def test_websockets_library_at_well_known(live: LiveDaemon) -> None:
    """WKU-1: the ``websockets`` client (which refuses redirects) connects to
    ws://host/.well-known/jmap with subprotocol jmap and gets a Core/echo Response."""
    await live.add_user("alice")
    auth = basic_header("alice")["Authorization"]
    selected, reply = await threads.deferToThread(_websockets_echo, ws_url(live), auth)
    assert selected == "jmap"
    assert reply["@type"] == "Response" and reply["requestId"] == "w1"
    assert reply["methodResponses"] == [["Core/echo", {"via": "websockets"}, "c1"]]


def _websocket_client_echo(url: str, auth: str) -> tuple[str | None, dict[str, Any]]:
    ws = websocket_client.create_connection(url, subprotocols=["jmap"],
                                            header=[f"Authorization: {auth}"], timeout=10)
    try:
        ws.send(json.dumps(echo(rid="w2", via="websocket-client")))
        reply = json.loads(ws.recv())
        return ws.getsubprotocol(), reply
    finally:
        ws.close()


@pytest_twisted.ensureDeferred
async def test_websocket_client_library_at_well_known(live: LiveDaemon) -> None:
    """WKU-1: the ``websocket-client`` library connects to /.well-known/jmap too."""
    await live.add_user("alice")
    auth = basic_header("alice")["Authorization"]
    selected, reply = await threads.deferToThread(_websocket_client_echo, ws_url(live), auth)
    assert selected == "jmap"
    assert reply["methodResponses"] == [["Core/echo", {"via": "websocket-client"}, "c1"]]


@pytest_twisted.ensureDeferred
async def test_well_known_handshake_refusals_are_the_websocket_ones(live: LiveDaemon) -> None:
    """WS-4, C-WS-1: at /.well-known/jmap a handshake without credentials is a 401 with a
    challenge and one without the jmap subprotocol a 400, exactly as at /jmap/ws (no 307)."""
    await live.add_user("alice")
    status, headers, _ = await raw_get(live.base, handshake_headers(), path=WELL_KNOWN)
    assert status == 401 and "www-authenticate" in headers
    status, headers, body = await raw_get(
        live.base, handshake_headers("chat", **basic_header("alice")), path=WELL_KNOWN)
    assert status == 400 and "jmap" in json.loads(body)["detail"]
    status, headers, _ = await raw_get(
        live.base, handshake_headers(**basic_header("alice")), path=WELL_KNOWN)
    assert status == 101 and headers["sec-websocket-protocol"] == "jmap"


@pytest_twisted.ensureDeferred
async def test_plain_get_still_redirects_and_session_url_unchanged(live: LiveDaemon) -> None:
    """SES-2, C-SES-1, WS-1: a plain GET of /.well-known/jmap is still the 307 to the
    session, and the session's websocket capability still names /jmap/ws."""
    await live.add_user("alice")
    r = await treq.get(live.base + WELL_KNOWN, allow_redirects=False)
    assert r.code == 307
    assert r.headers.getRawHeaders("Location") == [live.base + "/jmap/session"]
    await r.content()
    r = await treq.get(live.base + "/jmap/session", headers=basic("alice", "secret"))
    session = await r.json()
    assert session["capabilities"][WEBSOCKET_CAPABILITY]["url"] == (
        live.base.replace("http://", "ws://") + "/jmap/ws")
    assert CORE in session["capabilities"]
