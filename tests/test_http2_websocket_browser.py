"""RFC 8441 with a real browser: headless Chromium loads the daemon's demo page over
https (h2 through ALPN; the test certificate is accepted with
``--ignore-certificate-errors``) and opens ``new WebSocket(url, "jmap")`` from it. The
daemon must see that WebSocket arrive as an extended CONNECT on the page's HTTP/2
connection (an :class:`H2WebSocket`, and ``status="connect"`` in
``jmappushd_http_requests``), and the page must receive the StateChange of a publish.
Checklist: H2WS-1, H2WS-2, WS-18, WS-19.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.python.threadpool import ThreadPool

from jmappushd.config import parse_config
from jmappushd.transports.websocket.h2session import H2WebSocket
from jmappushd.transports.websocket.service import WebSocketService
from tests.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_browser
from tests.support import free_port, start_daemon, stop_daemon
from tests.test_http2_live import until
from tests.test_websocket_helpers import self_signed

OPEN_SOCKET = """async (url) => {
  window.received = [];
  window.onReceived = () => {};
  const ws = new WebSocket(url, "jmap");
  window.jmapSocket = ws;
  ws.onmessage = (e) => { window.received.push(e.data); window.onReceived(); };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  ws.send(JSON.stringify({"@type": "WebSocketPushEnable", "dataTypes": null}));
  ws.send(JSON.stringify({"@type": "Request", "id": "r1",
    "using": ["urn:ietf:params:jmap:core"], "methodCalls": [["Core/echo", {}, "c1"]]}));
  return ws.protocol;
}"""

# The demo page's CSP has no 'unsafe-eval', and Playwright's wait_for_function polls a
# string predicate through eval: it fails whenever the first check comes too early. A
# function handed to evaluate() is not eval'd, so the wait is a promise the socket's
# onmessage settles.
WAIT_FOR = """([n, ms]) => new Promise((resolve, reject) => {
  const timer = setTimeout(
    () => reject(new Error(`${window.received.length} of ${n} messages`)), ms);
  const check = () => {
    if (window.received.length < n) return;
    clearTimeout(timer);
    window.onReceived = () => {};
    resolve(window.received);
  };
  window.onReceived = check;
  check();
})"""


class Page:
    """Chromium in a thread of its own (Playwright's sync API), driven step by step."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, "--ignore-certificate-errors"])
        self.page = self._browser.new_context(ignore_https_errors=True).new_page()
        self.page.set_default_timeout(TIMEOUT_MS)

    def load(self, url: str) -> str:
        response = self.page.goto(url)
        assert response is not None and response.status == 200
        return str(self.page.evaluate("performance.getEntries()[0].nextHopProtocol"))

    def open_socket(self, url: str) -> str:
        return str(self.page.evaluate(OPEN_SOCKET, url))

    def wait_for(self, n: int) -> list[Any]:
        received = self.page.evaluate(WAIT_FOR, [n, TIMEOUT_MS])
        return [json.loads(m) for m in received]

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


def _one_thread() -> tuple[ThreadPool, Any]:
    """Playwright's sync API must stay on the thread that started it: one worker."""
    pool = ThreadPool(minthreads=1, maxthreads=1, name="chromium")
    pool.start()

    def run(f: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(reactor, pool, f, *args)  # type: ignore[arg-type]

    return pool, run


@pytest_twisted.ensureDeferred
async def test_chromium_opens_its_websocket_over_h2(tmp_path: Path) -> None:
    """Chromium's WebSocket from an h2 page rides that connection as an extended CONNECT
    and receives a published StateChange."""
    require_browser()
    key, cert, _ = self_signed(tmp_path)
    port, admin = free_port(), free_port()
    tls = f"interface=127.0.0.1:privateKey={key}:certKey={cert}"
    text = (f"[server]\nlisten = ssl:{port}:{tls}\npublic-url = https://127.0.0.1:{port}\n"
            f"state-dir = {tmp_path / 'state'}\ndemo-page = true\n"
            f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n"
            "[auth]\nallow-access-token-query = true\n"
            "[websocket]\nws-throttle = 0\n")
    d = await start_daemon(parse_config(text, str(tmp_path / "x.ini"), environ={}))
    page: Page | None = None
    pool, in_chromium = _one_thread()
    try:
        account = await d.add_user("alice")
        token = await d.add_token("alice")
        page = await in_chromium(Page)
        base = f"https://127.0.0.1:{port}"
        assert await in_chromium(page.load, base + "/demo/") == "h2"
        url = f"wss://127.0.0.1:{port}/jmap/ws?access_token={token}"
        assert await in_chromium(page.open_socket, url) == "jmap"
        factory = d.service.transport(WebSocketService).factory
        await until(lambda: len(factory.connections) == 1, "the WebSocket to arrive")
        (member,) = factory.connections
        assert isinstance(member, H2WebSocket)  # over the page's h2 connection
        assert d.app.metrics.registry.get_sample_value(
            "jmappushd_http_requests_total", {"endpoint": "websocket", "status": "connect"}) == 1
        (answer,) = await in_chromium(page.wait_for, 1)
        assert answer["@type"] == "Response"
        await d.publish({account: {"Email": "browser1"}})
        received = await in_chromium(page.wait_for, 2)
        assert received[1]["@type"] == "StateChange"
        assert received[1]["changed"] == {account: {"Email": "browser1"}}
    finally:
        if page is not None:
            await in_chromium(page.close)
        pool.stop()
        await stop_daemon(d)
