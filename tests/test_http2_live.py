"""HTTP/2 end to end: the in-process daemon on ``ssl:`` listeners with a certificate made
here, and ``httpx`` (h2) as the client, in a thread while the reactor serves.

Everything the daemon serves works over h2 as over HTTP/1.1: the session, the API and
its request-level errors, the over-size refusal (a proper h2 response), an EventSource
with a published change, admin endpoints and CORS; ``[server] http2 = false`` keeps
ALPN at http/1.1. Checklist: SES-4, API-21, ES-*, C-SES-1.
"""

from __future__ import annotations

import json
import queue
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from jmappushd.config import parse_config
from jmappushd.transports.eventsource.service import EventSourceService
from tests.support import LiveDaemon, free_port, start_daemon, stop_daemon
from tests.test_websocket_helpers import basic_header, self_signed

T = TypeVar("T")
DEADLINE = 10.0
CORE = "urn:ietf:params:jmap:core"
ORIGIN = "https://app.example"


@asynccontextmanager
async def tls_daemon(tmp_path: Path, http2: bool = True, admin_tls: bool = False
                     ) -> AsyncIterator[tuple[LiveDaemon, Path]]:
    """A daemon on an ssl: listener (and admin on one too with ``admin_tls``; then
    ``LiveDaemon.publish``, which does not trust the certificate, cannot be used)."""
    key, cert, _ = self_signed(tmp_path)
    port, admin = free_port(), free_port()
    tls = f"interface=127.0.0.1:privateKey={key}:certKey={cert}"
    text = (f"[server]\nlisten = ssl:{port}:{tls}\npublic-url = https://127.0.0.1:{port}\n"
            f"state-dir = {tmp_path / 'state'}\ncors-origins = {ORIGIN}\n"
            f"http2 = {'true' if http2 else 'false'}\n"
            f"[admin]\nlisten = {'ssl' if admin_tls else 'tcp'}:{admin}:"
            f"{tls if admin_tls else 'interface=127.0.0.1'}\n"
            "[event-source]\nevent-source-throttle = 0\n"
            "[jmap]\nmax-size-request = 4000\n")
    d = await start_daemon(parse_config(text, str(tmp_path / "x.ini"), environ={}))
    d.base = f"https://127.0.0.1:{port}"
    d.admin = f"{'https' if admin_tls else 'http'}://127.0.0.1:{admin}"
    try:
        yield d, cert
    finally:
        await stop_daemon(d)


def in_thread(f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
    return threads.deferToThread(f, *args)


def client(cert: Path, http2: bool = True) -> httpx.Client:
    return httpx.Client(http2=http2, verify=ssl.create_default_context(cafile=str(cert)),
                        timeout=DEADLINE)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` on the reactor until true or the deadline passes."""
    end = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await task.deferLater(reactor, 0.02, lambda: None)


def _get(cert: Path, url: str, headers: dict[str, str], http2: bool = True
         ) -> tuple[str, int, dict[str, str], bytes]:
    with client(cert, http2) as c:
        r = c.get(url, headers=headers)
        return r.http_version, r.status_code, dict(r.headers), r.content


def _requests(cert: Path, base: str, auth: dict[str, str]
              ) -> list[tuple[str, int, Any]]:
    """Several requests on ONE h2 connection: echo, request-level errors, over-size, echo."""
    api = base + "/jmap/api/"
    ok = {"using": [CORE], "methodCalls": [["Core/echo", {"n": 1}, "c1"]]}
    out = []
    with client(cert) as c:
        bodies: list[tuple[dict[str, str], bytes]] = [
            (auth, json.dumps(ok).encode()),
            (auth, b"{not json"),
            (auth, json.dumps({"using": [CORE, "urn:x"],
                               "methodCalls": [["Core/echo", {}, "c1"]]}).encode()),
            ({}, json.dumps(ok).encode()),
            (auth, b"[" + b" " * 5000 + b"]"),
            (auth, json.dumps(ok).encode()),
        ]
        for headers, body in bodies:
            r = c.post(api, content=body,
                       headers={"Content-Type": "application/json", **headers})
            out.append((r.http_version, r.status_code, r.json()))
        # an over-size body streamed without Content-Length
        r = c.post(api, content=iter([b"[", b" " * 5000, b"]"]),
                   headers={"Content-Type": "application/json", **auth})
        out.append((r.http_version, r.status_code, r.json()))
    return out


@pytest_twisted.ensureDeferred
async def test_session_and_api_over_h2(tmp_path: Path) -> None:
    """SES-4, API-21: over h2 (ALPN) the session answers 200, and on one connection the API
    answers Core/echo, notJSON, unknownCapability, 401 and the over-size limit problem
    (announced and streamed) as h2 responses, the connection staying usable."""
    async with tls_daemon(tmp_path) as (d, cert):
        await d.add_user("alice")
        auth = basic_header("alice")
        version, status, _, body = await in_thread(_get, cert, d.base + "/jmap/session", auth)
        assert (version, status) == ("HTTP/2", 200)
        assert json.loads(body)["apiUrl"] == d.base + "/jmap/api/"
        results = await in_thread(_requests, cert, d.base, auth)
        assert {v for v, _, _ in results} == {"HTTP/2"}
        echo, not_json, unknown_cap, no_auth, big, again, streamed = results
        assert echo[1] == 200 and echo[2]["methodResponses"][0][1] == {"n": 1}
        assert not_json[1] == 400 and not_json[2]["type"].endswith(":notJSON")
        assert unknown_cap[1] == 400
        assert unknown_cap[2]["type"].endswith(":unknownCapability"), unknown_cap
        assert no_auth[1] == 401
        for oversize in (big, streamed):
            assert oversize[1] == 400 and oversize[2]["limit"] == "maxSizeRequest"
        assert again[1] == 200


def _eventsource(cert: Path, url: str, auth: dict[str, str],
                 lines: queue.Queue[str]) -> str:
    with client(cert) as c, c.stream("GET", url, headers=auth) as r:
        lines.put(f"{r.http_version} {r.status_code}")
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "state":
                return line.split(":", 1)[1].strip()
    return ""


@pytest_twisted.ensureDeferred
async def test_eventsource_over_h2_gets_published_change(tmp_path: Path) -> None:
    """ES over h2: an EventSource stream (ping=100, longer than the idle timeout) receives
    the StateChange published after it opened."""
    async with tls_daemon(tmp_path) as (d, cert):
        account = await d.add_user("alice")
        url = d.base + "/jmap/eventsource/?types=*&closeafter=no&ping=100"
        lines: queue.Queue[str] = queue.Queue()
        got = in_thread(_eventsource, cert, url, basic_header("alice"), lines)
        streams = d.service.transport(EventSourceService)
        await until(lambda: streams.registry.count > 0, "the stream to open")
        assert lines.get(timeout=DEADLINE) == "HTTP/2 200"
        await d.publish({account: {"Email": "s1"}})
        data = json.loads(await got)
        assert data["@type"] == "StateChange" and data["changed"] == {account: {"Email": "s1"}}


@pytest_twisted.ensureDeferred
async def test_admin_and_cors_over_h2(tmp_path: Path) -> None:
    """Admin (/health) and CORS (a preflight and an actual request from a listed origin)
    work over h2 like over HTTP/1.1."""
    async with tls_daemon(tmp_path, admin_tls=True) as (d, cert):
        version, status, _, _ = await in_thread(_get, cert, d.admin + "/health", {})
        assert (version, status) == ("HTTP/2", 200)

        def preflight() -> httpx.Response:
            with client(cert) as c:
                return c.request("OPTIONS", d.base + "/jmap/api/", headers={
                    "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type"})

        r = await in_thread(preflight)
        assert r.http_version == "HTTP/2" and r.status_code == 204
        assert r.headers["access-control-allow-origin"] == ORIGIN
        version, status, headers, _ = await in_thread(
            _get, cert, d.base + "/.well-known/jmap", {"Origin": ORIGIN})
        assert (version, status) == ("HTTP/2", 307)
        assert headers["access-control-allow-origin"] == ORIGIN


@pytest_twisted.ensureDeferred
async def test_http2_false_keeps_http11(tmp_path: Path) -> None:
    """[server] http2 = false: a client offering h2 gets HTTP/1.1 (ALPN), with h2 installed."""
    async with tls_daemon(tmp_path, http2=False) as (d, cert):
        await d.add_user("alice")
        version, status, _, _ = await in_thread(
            _get, cert, d.base + "/jmap/session", basic_header("alice"))
        assert (version, status) == ("HTTP/1.1", 200)
