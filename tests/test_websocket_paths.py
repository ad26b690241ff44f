"""Only the exact WebSocket paths open a WebSocket, over HTTP/1.1 and HTTP/2.

The handshake resource is a leaf, so Twisted routes every path below ``/jmap/ws`` to
it, and the well-known directory every path below ``/.well-known/jmap``: such a path
(``/jmap/ws/extra``, ``/jmap/ws/``, ``/.well-known/jmap/x``) is the JSON 404 of an
unknown path for an Upgrade and for an extended CONNECT alike, opens no session, and
the exact paths still open one. Checklist: WS-1, WKU-1, H2WS-2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted

from jmappushd.transports.websocket.service import WebSocketService
from tests.support import LiveDaemon
from tests.test_http2_websocket_live import H2Client, in_thread, tls_daemon
from tests.test_websocket_helpers import basic_header, echo, handshake_headers, raw_get

BELOW = ("/jmap/ws/extra", "/jmap/ws/", "/jmap/ws/a/b", "/.well-known/jmap/x",
         "/.well-known/jmap/", "/.well-known/jmap/ws")
EXACT = ("/jmap/ws", "/.well-known/jmap")


@pytest_twisted.ensureDeferred
async def test_paths_below_the_endpoint_are_404_over_http11(live: LiveDaemon) -> None:
    """An authenticated Upgrade with the jmap subprotocol below either WebSocket path is a
    404 problem, no 101, and no connection is registered; the exact paths answer 101."""
    await live.add_user("alice")
    factory = live.service.transport(WebSocketService).factory
    headers = handshake_headers(**basic_header("alice"))
    for path in BELOW:
        status, found, body = await raw_get(live.base, headers, path=path)
        assert (path, status) == (path, 404)
        assert found["content-type"] == "application/problem+json"
        assert json.loads(body)["status"] == 404
        assert "sec-websocket-accept" not in found
        assert not factory.connections
    for path in EXACT:
        status, found, _ = await raw_get(live.base, headers, path=path)
        assert (path, status) == (path, 101)
        assert found["sec-websocket-protocol"] == "jmap"


@pytest_twisted.ensureDeferred
async def test_paths_below_the_endpoint_are_404_over_h2(tmp_path: Path) -> None:
    """The same over HTTP/2: an extended CONNECT below either path gets a 404 problem and
    its stream ends, no session opens; on the same connection the exact paths then open
    WebSockets that answer a Core/echo."""
    async with tls_daemon(tmp_path) as (d, cert, port):
        await d.add_user("alice")
        auth = basic_header("alice")
        factory = d.service.transport(WebSocketService).factory
        c: H2Client = await in_thread(H2Client, port, cert)
        try:
            for path in BELOW:
                sid = await in_thread(c.connect, auth, path)
                await in_thread(c.wait, lambda s=sid: s in c.ended, f"the end of {path}")
                assert (path, c.status[sid]) == (path, 404)
                assert c.headers[sid][b"content-type"] == b"application/problem+json"
                assert json.loads(c.body[sid])["status"] == 404
                assert not factory.connections
            for path in EXACT:
                sid = await in_thread(c.connect, auth, path)
                assert (path, c.status[sid]) == (path, 200)
                c.send_json(sid, echo(rid=path))
                reply = await in_thread(c.next_text, sid)
                assert (reply["@type"], reply["requestId"]) == ("Response", path)
            assert len(factory.connections) == 2
        finally:
            await in_thread(c.close)
