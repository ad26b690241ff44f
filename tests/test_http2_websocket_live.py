"""JMAP over WebSocket on HTTP/2 (RFC 8441) end to end: the in-process daemon on an
``ssl:`` listener, and an ``h2`` + ``wsproto`` client over a real TLS socket (ALPN h2),
run in a thread while the reactor serves.

Checklist: H2WS-1, H2WS-2, WS-4, WS-5, WS-18, WS-19, C-WS-1, and the per-user limit; an
extended CONNECT only opens a WebSocket at a WebSocket URL.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest_twisted
from twisted.internet import defer, threads
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping, TextMessage

from jmappushd.config import parse_config
from jmappushd.transports.eventsource.service import EventSourceService
from jmappushd.transports.websocket.service import WebSocketService
from tests.support import LiveDaemon, free_port, start_daemon, stop_daemon
from tests.test_http2_live import until
from tests.test_websocket_helpers import basic_header, echo, self_signed

T = TypeVar("T")
DEADLINE = 10.0


@asynccontextmanager
async def tls_daemon(tmp_path: Path) -> AsyncIterator[tuple[LiveDaemon, Path, int]]:
    key, cert, _ = self_signed(tmp_path)
    port, admin = free_port(), free_port()
    tls = f"interface=127.0.0.1:privateKey={key}:certKey={cert}"
    text = (f"[server]\nlisten = ssl:{port}:{tls}\npublic-url = https://127.0.0.1:{port}\n"
            f"state-dir = {tmp_path / 'state'}\n"
            f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n"
            "[event-source]\nevent-source-throttle = 0\n"
            "[websocket]\nws-throttle = 0\nws-heartbeat-interval = 1\n"
            "ws-client-timeout = 30\nmax-connections-per-user = 3\n")
    d = await start_daemon(parse_config(text, str(tmp_path / "x.ini"), environ={}))
    d.base = f"https://127.0.0.1:{port}"
    try:
        yield d, cert, port
    finally:
        await stop_daemon(d)


def in_thread(f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
    return threads.deferToThread(f, *args)


class H2Client:
    """A blocking HTTP/2 client over TLS; each stream may carry a wsproto WebSocket."""

    def __init__(self, port: int, cert: Path) -> None:
        context = ssl.create_default_context(cafile=str(cert))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.lock = threading.Lock()
        self.status: dict[int, int] = {}
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.ended: set[int] = set()
        self.body: dict[int, bytes] = {}
        self.ws: dict[int, Connection] = {}
        self.texts: dict[int, list[Any]] = {}
        self.pings: dict[int, int] = {}
        self.closes: dict[int, list[int]] = {}
        self._partial: dict[int, str] = {}
        self._send()
        self.wait(lambda: self.conn.remote_settings[
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1, "SETTINGS")

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _read_once(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        for event in self.conn.receive_data(data):
            self._event(event)
        self._send()

    def _event(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", 0)
        if isinstance(event, h2.events.ResponseReceived):
            self.headers[sid] = dict(event.headers)
            self.status[sid] = int(self.headers[sid][b":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            ws = self.ws.get(sid)
            if ws is None:
                self.body[sid] = self.body.get(sid, b"") + event.data
            elif event.data:
                ws.receive_data(event.data)
                self._ws_events(sid, ws)
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            self.ended.add(sid)

    def _ws_events(self, sid: int, ws: Connection) -> None:
        for event in ws.events():
            if isinstance(event, TextMessage):
                self._partial[sid] = self._partial.get(sid, "") + event.data
                if event.message_finished:
                    self.texts.setdefault(sid, []).append(json.loads(self._partial.pop(sid)))
            elif isinstance(event, Ping):
                self.pings[sid] = self.pings.get(sid, 0) + 1
                self.conn.send_data(sid, ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closes.setdefault(sid, []).append(event.code)

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        end = time.monotonic() + DEADLINE
        while not condition():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            self._read_once()

    # -- requests --

    def connect(self, headers: dict[str, str], path: str = "/jmap/ws",
                protocols: str | None = "jmap", protocol: str | None = "websocket") -> int:
        """An extended CONNECT (``protocol`` None: a plain CONNECT, authority only)."""
        sid: int = self.conn.get_next_available_stream_id()
        extra = {"sec-websocket-version": "13", **headers}
        if protocols is not None:
            extra["sec-websocket-protocol"] = protocols
        pseudo = [(":method", "CONNECT"), (":authority", "127.0.0.1")]
        if protocol is not None:
            pseudo += [(":protocol", protocol), (":scheme", "https"), (":path", path)]
        self.conn.send_headers(sid, [*pseudo, *extra.items()])
        self._send()
        self.wait(lambda: sid in self.status, "the CONNECT's answer")
        if self.status[sid] == 200 and protocol == "websocket":
            self.ws[sid] = Connection(ConnectionType.CLIENT)
        return sid

    def get(self, path: str, headers: dict[str, str]) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                     (":path", path), (":authority", "127.0.0.1"),
                                     *headers.items()], end_stream=True)
        self._send()
        self.wait(lambda: sid in self.status, "the GET's answer")
        return sid

    def send_json(self, sid: int, obj: Any) -> None:
        self.conn.send_data(sid, self.ws[sid].send(TextMessage(json.dumps(obj))))
        self._send()

    def next_text(self, sid: int, n: int = 1) -> Any:
        self.wait(lambda: len(self.texts.get(sid, [])) >= n, "a message")
        return self.texts[sid][n - 1]

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self._send()

    def close_ws(self, sid: int) -> None:
        self.conn.send_data(sid, self.ws[sid].send(CloseConnection(code=1000)))
        self._send()
        self.wait(lambda: sid in self.ended, "the stream's end")

    def close(self) -> None:
        self.conn.close_connection()
        self._send()
        self.sock.close()


@pytest_twisted.ensureDeferred
async def test_jmap_session_over_h2_websocket(tmp_path: Path) -> None:
    """H2WS-1/2 over real TLS: the setting, 200 + jmap, a Response, a RequestError, push
    enable and the StateChange (with pushState) of a publish, heartbeat Pings answered;
    the client's Close ends the stream."""
    async with tls_daemon(tmp_path) as (d, cert, port):
        account = await d.add_user("alice")
        c: H2Client = await in_thread(H2Client, port, cert)
        try:
            sid = await in_thread(c.connect, basic_header("alice"))
            assert c.status[sid] == 200
            assert c.headers[sid][b"sec-websocket-protocol"] == b"jmap"
            c.send_json(sid, echo(rid="r1", n=1))
            answer = await in_thread(c.next_text, sid, 1)
            assert answer["@type"] == "Response" and answer["requestId"] == "r1"
            c.send_json(sid, {"@type": "Request", "id": "r2", "using": []})
            problem = await in_thread(c.next_text, sid, 2)
            assert problem["@type"] == "RequestError" and problem["requestId"] == "r2"
            c.send_json(sid, {"@type": "WebSocketPushEnable", "dataTypes": None})
            c.send_json(sid, echo(rid="r3"))  # its answer: the enable was processed
            assert (await in_thread(c.next_text, sid, 3))["requestId"] == "r3"
            await in_thread(c.wait, lambda: c.pings.get(sid, 0) >= 1, "a heartbeat ping")
            await d.publish({account: {"Email": "h2e1"}})
            pushed = await in_thread(c.next_text, sid, 4)
            assert pushed["@type"] == "StateChange"
            assert pushed["changed"] == {account: {"Email": "h2e1"}}
            assert isinstance(pushed["pushState"], str) and len(pushed["pushState"]) == 43
            await in_thread(c.close_ws, sid)
            assert c.closes[sid] == [1000]
            factory = d.service.transport(WebSocketService).factory
            await until(lambda: not factory.connections, "the session to end")
        finally:
            await in_thread(c.close)


@pytest_twisted.ensureDeferred
async def test_refusals_and_limit_over_h2(tmp_path: Path) -> None:
    """401 without credentials (with WWW-Authenticate), 400 without the jmap subprotocol,
    and the per-user limit (3) as 429 for the fourth; all on one connection, which
    keeps serving."""
    async with tls_daemon(tmp_path) as (d, cert, port):
        await d.add_user("alice")
        c: H2Client = await in_thread(H2Client, port, cert)
        try:
            sid = await in_thread(c.connect, {})
            assert c.status[sid] == 401 and b"www-authenticate" in c.headers[sid]
            sid = await in_thread(c.connect, basic_header("alice"), "/jmap/ws", "chat")
            assert c.status[sid] == 400
            opened = [await in_thread(c.connect, basic_header("alice")) for _ in range(3)]
            assert [c.status[s] for s in opened] == [200, 200, 200]
            fourth = await in_thread(c.connect, basic_header("alice"))
            assert c.status[fourth] == 429
            await in_thread(c.wait, lambda: fourth in c.ended, "the refusal's end")
            c.send_json(opened[0], echo())
            assert (await in_thread(c.next_text, opened[0]))["@type"] == "Response"
        finally:
            await in_thread(c.close)


@pytest_twisted.ensureDeferred
async def test_multiplexed_websockets_and_eventsource(tmp_path: Path) -> None:
    """Two WebSockets (one at /.well-known/jmap) and an EventSource on ONE h2 connection
    all get the published change; resetting one WebSocket's stream ends only its session,
    the other WebSocket and the EventSource get the next change."""
    async with tls_daemon(tmp_path) as (d, cert, port):
        account = await d.add_user("alice")
        auth = basic_header("alice")
        c: H2Client = await in_thread(H2Client, port, cert)
        try:
            one = await in_thread(c.connect, auth)
            two = await in_thread(c.connect, auth, "/.well-known/jmap")
            es = await in_thread(c.get, "/jmap/eventsource/?types=*&closeafter=no&ping=0",
                                 {k.lower(): v for k, v in auth.items()})
            assert (c.status[one], c.status[two], c.status[es]) == (200, 200, 200)
            for sid in (one, two):  # the echo's answer says the enable was processed
                c.send_json(sid, {"@type": "WebSocketPushEnable"})
                c.send_json(sid, echo())
                assert (await in_thread(c.next_text, sid))["@type"] == "Response"
            factory = d.service.transport(WebSocketService).factory
            streams = d.service.transport(EventSourceService)
            await until(lambda: streams.registry.count == 1, "the EventSource")
            await d.publish({account: {"Email": "m1"}})
            for sid in (one, two):
                assert (await in_thread(c.next_text, sid, 2))["changed"] == {
                    account: {"Email": "m1"}}
            await in_thread(c.wait, lambda: b"m1" in c.body.get(es, b""), "the ES event")
            c.reset(one)
            await until(lambda: len(factory.connections) == 1, "the reset session to end")
            await d.publish({account: {"Email": "m2"}})
            assert (await in_thread(c.next_text, two, 3))["changed"] == {
                account: {"Email": "m2"}}
            await in_thread(c.wait, lambda: b"m2" in c.body.get(es, b""), "the 2nd ES event")
            assert len(c.texts.get(one, [])) == 2
        finally:
            await in_thread(c.close)


@pytest_twisted.ensureDeferred
async def test_connect_elsewhere_is_refused(tmp_path: Path) -> None:
    """H2WS-2's converse on the real resource tree: an extended CONNECT (with credentials
    and the jmap subprotocol) to the API, session, EventSource or upload URL is a 405
    problem with the resource's ``Allow`` (not Twisted's 501 page), to an unknown path
    a 404 problem; another ``:protocol`` is 501 and a plain CONNECT 405. Each refusal
    ends its stream, opens no session, and the connection then opens a WebSocket."""
    async with tls_daemon(tmp_path) as (d, cert, port):
        await d.add_user("alice")
        auth = basic_header("alice")
        c: H2Client = await in_thread(H2Client, port, cert)
        try:
            cases = [("/jmap/api/", 405, b"POST"), ("/jmap/session", 405, b"GET"),
                     ("/jmap/eventsource/?types=*&closeafter=no&ping=0", 405, b"GET"),
                     ("/jmap/upload/A/", 405, b"POST"), ("/nonexistent", 404, None),
                     ("/", 404, None)]
            for path, status, allow in cases:
                sid = await in_thread(c.connect, auth, path)
                await in_thread(c.wait, lambda s=sid: s in c.ended, f"the end of {path}")
                assert (path, c.status[sid]) == (path, status)
                assert c.headers[sid].get(b"allow") == allow
                assert c.headers[sid][b"content-type"] == b"application/problem+json"
                assert json.loads(c.body[sid])["status"] == status
            other = await in_thread(c.connect, auth, "/jmap/ws", "jmap", "webtransport")
            plain = await in_thread(c.connect, auth, "/jmap/ws", "jmap", None)
            await in_thread(c.wait, lambda: {other, plain} <= c.ended, "the refusals' end")
            assert (c.status[other], c.status[plain]) == (501, 405)
            factory = d.service.transport(WebSocketService).factory
            assert not factory.connections
            sid = await in_thread(c.connect, auth)
            assert c.status[sid] == 200
            c.send_json(sid, echo())
            assert (await in_thread(c.next_text, sid))["@type"] == "Response"
        finally:
            await in_thread(c.close)
