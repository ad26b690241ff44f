"""Throttled and over-busy logins on every endpoint, in memory (issue 11, defect 4): the
session, the EventSource stream and the WebSocket handshake (before any upgrade) answer
429 / 503 with ``Retry-After`` and an RFC 7807 body, counted in the metrics; the address
is the request's client address (``App.clients``). task.Clock, fake threads, no sockets."""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.auth.passwords import hash_password
from jmappushd.daemon.service import build_app
from jmappushd.store import MemoryStore
from jmappushd.transports.eventsource.registry import StreamRegistry
from jmappushd.transports.eventsource.resource import EventSourceResource
from jmappushd.transports.websocket.factory import JMAPWebSocketFactory
from jmappushd.transports.websocket.handshake import HandshakeResource
from jmappushd.web.discovery import SessionResource
from tests.auth_fakes import HeldThreads
from tests.store_backends import counting_ids
from tests.support import TEST_LOG_N, make_config, start_daemon, stop_daemon

LIMITS = "max-failures = 2\nmax-concurrent-kdf = 1\nmax-queued-kdf = 1\nfailure-window = 60"


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.threads = HeldThreads()
        store = MemoryStore(make_id=counting_ids())
        store.open()
        store.add_user("alice", hash_password("right", TEST_LOG_N), "A")
        config = make_config(tmp_path, sections={"auth": LIMITS})
        self.app = build_app(config, self.clock, store, self.threads)
        defer.ensureDeferred(self.app.hub.start())
        self.resources: dict[str, Resource] = {
            "session": SessionResource(self.app),
            "eventsource": EventSourceResource(self.app, self.clock, StreamRegistry(store)),
            "websocket": HandshakeResource(
                self.app, JMAPWebSocketFactory(self.app, reactor=self.clock)),
        }

    def get(self, endpoint: str, password: str, peer: str = "192.0.2.1") -> DummyChannel:
        channel = DummyChannel(peer=IPv4Address("TCP", peer, 40000))
        request = Request(channel)
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        request.args = {b"types": [b"*"], b"closeafter": [b"no"], b"ping": [b"0"]}
        raw = base64.b64encode(f"alice:{password}".encode())
        headers = request.requestHeaders
        headers.setRawHeaders(b"Authorization", [b"Basic " + raw])
        headers.setRawHeaders(b"Upgrade", [b"websocket"])
        headers.setRawHeaders(b"Connection", [b"Upgrade"])
        headers.setRawHeaders(b"Sec-WebSocket-Protocol", [b"jmap"])
        headers.setRawHeaders(b"Sec-WebSocket-Version", [b"13"])
        headers.setRawHeaders(b"Sec-WebSocket-Key", [b"dGhlIHNhbXBsZSBub25jZQ=="])
        self.resources[endpoint].render(request)
        self.threads.run_all()
        return channel


def response(channel: DummyChannel) -> tuple[int, dict[str, str], Any]:
    head, _, body = channel.transport.written.getvalue().partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    parsed = json.loads(body) if headers.get("Content-Type", "").endswith("json") else body
    return int(lines[0].split()[1]), headers, parsed


@pytest.mark.parametrize("endpoint", ["session", "eventsource", "websocket"])
def test_a_throttled_address_gets_429_with_retry_after(tmp_path: Path, endpoint: str) -> None:
    """Two failures, then even the right password gets 429 with Retry-After and a problem
    body, without a KDF, on this endpoint (the WebSocket before any 101); another client
    address still logs in (checked where no real socket is needed)."""
    s = Setup(tmp_path)
    for _ in range(2):
        assert response(s.get(endpoint, "wrong"))[0] == 401
    kdfs = s.threads.calls
    status, headers, body = response(s.get(endpoint, "right"))
    assert status == 429 and s.threads.calls == kdfs
    assert headers["Retry-After"] == "60"
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == 429 and body["retryAfter"] == 60 and "address" in body["detail"]
    assert "WWW-Authenticate" not in headers and "Upgrade" not in headers
    if endpoint != "websocket":  # a real upgrade needs a real transport (live tests)
        assert response(s.get(endpoint, "right", peer="192.0.2.2"))[0] == 200
    metrics = s.app.metrics.render().decode()
    assert 'jmappushd_logins_refused_total{reason="throttled"} 1.0' in metrics
    assert f'endpoint="{endpoint}",status="429"' in metrics


def test_a_full_kdf_queue_gets_503_with_retry_after(tmp_path: Path) -> None:
    """One slot, one queued: a third distinct login waiting for a KDF gets 503 with
    Retry-After and a problem body; the metrics show the queue."""
    s = Setup(tmp_path)
    s.threads.run_all = lambda: None  # type: ignore[method-assign]  # hold every KDF
    s.get("session", "guess1", peer="198.51.100.1")
    s.get("session", "guess2", peer="198.51.100.2")
    metrics = s.app.metrics.render().decode()
    assert "jmappushd_kdf_running 1.0" in metrics and "jmappushd_kdf_queued 1.0" in metrics
    status, headers, body = response(s.get("session", "guess3", peer="198.51.100.3"))
    assert status == 503 and headers["Retry-After"] == "1" and body["status"] == 503
    assert 'jmappushd_logins_refused_total{reason="busy"} 1.0' in s.app.metrics.render().decode()


@pytest_twisted.ensureDeferred
async def test_a_throttled_attempt_costs_its_connection(tmp_path: Path) -> None:
    """A 429 says Connection: close and the daemon closes: a throttled flood cannot
    keep one connection alive for thousands of refusals."""
    daemon = await start_daemon(make_config(tmp_path, sections={"auth": "max-failures = 1"}))
    try:
        await daemon.add_user("alice", "right")
        port = int(daemon.base.rsplit(":", 1)[1])

        def attempts() -> list[tuple[int, str | None, bool]]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            seen = []
            for password in ("wrong", "wrong"):
                token = base64.b64encode(f"alice:{password}".encode()).decode()
                conn.request("GET", "/jmap/session", headers={"Authorization": f"Basic {token}"})
                answer = conn.getresponse()
                answer.read()
                seen.append((answer.status, answer.getheader("Connection"), answer.will_close))
            conn.close()
            return seen

        seen = await threads.deferToThread(attempts)
        assert seen[0][0] == 401 and not seen[0][2]  # kept alive
        assert seen[1] == (429, "close", True)
    finally:
        await stop_daemon(daemon)
