"""``closeafter=state`` ends the connection, not only the response (ES-3).

Clients that read the body until the connection closes (sseclient, hence jmapc) hang
on a kept-alive connection after the last chunk; so the response says
``Connection: close`` and the server closes after it. Also: the ``lastEventId`` query
parameter, the resumption a browser page can ask for (it cannot set Last-Event-ID).
"""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import threads
from twisted.internet.testing import StringTransport
from twisted.web import http
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.web.responses import close_connection_after
from tests.support import LiveDaemon
from tests.test_eventsource_resource import Setup, events

TIMEOUT = 10.0


def test_close_connection_after_on_http11() -> None:
    """On an HTTP/1.x channel: the header, and the channel will not be kept alive."""
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    request = http.Request(channel)
    close_connection_after(request)
    assert request.responseHeaders.getRawHeaders(b"Connection") == [b"close"]
    assert not channel.persistent
    channel.connectionLost(None)


def test_no_connection_header_on_other_channels() -> None:
    """Another channel (an HTTP/2 stream forbids connection headers) is left alone."""
    request = Request(DummyChannel())
    close_connection_after(request)
    assert request.responseHeaders.getRawHeaders(b"Connection") is None


def _raw_get(port: int, path: str, auth: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Authorization: Basic {auth}\r\n\r\n".encode())
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    """Read until ``marker`` arrived (or EOF); the socket's timeout bounds each read."""
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while marker not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _read_to_eof(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything until the server closes; False if it had not closed by the deadline."""
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        if not chunk:
            return data, True
        data += chunk
    return data, False


@pytest_twisted.ensureDeferred
async def test_closeafter_state_closes_the_connection(live: LiveDaemon) -> None:
    """ES-3: with closeafter=state the response says Connection: close, and after the
    state event and the last chunk the server closes the TCP connection (EOF)."""
    account = await live.add_user("alice")
    port = int(live.base.rsplit(":", 1)[1])
    auth = base64.b64encode(b"alice:secret").decode()
    path = "/jmap/eventsource/?types=*&closeafter=state&ping=0"
    sock = await threads.deferToThread(_raw_get, port, path, auth)
    try:
        head = await threads.deferToThread(_read_until, sock, b": jmap event stream")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nConnection: close\r\n" in head
        await live.publish({account: {"Email": "s1"}})
        rest, closed = await threads.deferToThread(_read_to_eof, sock)
        assert closed, "the server kept the connection open after closeafter=state"
        body = head + rest
        assert b'"Email":"s1"' in body and body.endswith(b"0\r\n\r\n")
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_closeafter_no_keeps_the_connection_reusable(live: LiveDaemon) -> None:
    """closeafter=no sends no Connection: close (the stream stays open)."""
    await live.add_user("alice")
    port = int(live.base.rsplit(":", 1)[1])
    auth = base64.b64encode(b"alice:secret").decode()
    path = "/jmap/eventsource/?types=*&closeafter=no&ping=0"
    sock = await threads.deferToThread(_raw_get, port, path, auth)
    try:
        head = await threads.deferToThread(_read_until, sock, b": jmap event stream")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in head
    finally:
        sock.close()


def test_last_event_id_query_resumes(tmp_path: Path) -> None:
    """ES-10 for browsers: lastEventId in the query resumes like the header does."""
    s = Setup(tmp_path)
    _, channel = s.get(f"types=*&closeafter=no&ping=0&lastEventId={s.token(2)}")
    assert s.store.since is not None
    s.store.since.callback(None)
    [event] = events(channel)
    assert event.event == "state" and s.app.hub.tokens.open(s.user_id, event.id) == 5


def test_last_event_id_header_wins_over_the_query(tmp_path: Path) -> None:
    """The browser's own reconnects send the header with the newest id while the URL
    still carries the page's first one: the header is used."""
    s = Setup(tmp_path)
    stale = s.token(2)
    _, channel = s.get(f"types=*&closeafter=no&ping=0&lastEventId={stale}",
                       Last_Event_ID=s.token(5))
    if s.store.since is not None:
        s.store.since.callback(None)
    assert events(channel) == []  # nothing changed since seq 5; from seq 2 something did
