"""CORS as a browser enforces it: headless Chromium, pages from two other origins.

The daemon (``twistd -n jmappushd``) lists one page server's origin in ``[server]
cors-origins``. A page from that origin discovers the session through
``/.well-known/jmap``, calls the API (``Core/echo`` and ``PushSubscription/set``
create), reads a 401's challenge and receives a change over EventSource; a page from
an origin that is not listed is refused by the browser on every endpoint.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser import (
    TIMEOUT_MS,
    OriginServer,
    admin_publish,
    chromium,
    require_browser,
    started_daemon,
)
from tests.daemon_process import DaemonProcess

if TYPE_CHECKING:
    from playwright.sync_api import Page

ACCOUNT = "acc1"
AUTH = "Basic " + base64.b64encode(b"alice:s3cret").decode()

CALLS = """async ({base, auth}) => {
  const out = {};
  let r = await fetch(base + "/.well-known/jmap", {headers: {Authorization: auth}});
  out.wellKnown = {status: r.status, url: r.url, username: (await r.json()).username};
  r = await fetch(base + "/jmap/session", {headers: {Authorization: auth}});
  const session = await r.json();
  out.session = {status: r.status, username: session.username, apiUrl: session.apiUrl};
  r = await fetch(session.apiUrl, {method: "POST",
    headers: {Authorization: auth, "Content-Type": "application/json"},
    body: JSON.stringify({using: ["urn:ietf:params:jmap:core"], methodCalls: [
      ["Core/echo", {hello: "browser"}, "e"],
      ["PushSubscription/set", {create: {c: {deviceClientId: "browser",
        url: "https://127.0.0.1:9/push"}}}, "p"]]})});
  out.api = {status: r.status, body: await r.json()};
  r = await fetch(base + "/jmap/session");
  out.unauthorized = {status: r.status, challenge: r.headers.get("WWW-Authenticate"),
                      problem: (await r.json()).status};
  return out;
}"""

REFUSED = """async ({base, auth}) => {
  const out = {};
  const tries = {
    session: () => fetch(base + "/jmap/session", {headers: {Authorization: auth}}),
    wellKnown: () => fetch(base + "/.well-known/jmap", {headers: {Authorization: auth}}),
    api: () => fetch(base + "/jmap/api/", {method: "POST",
      headers: {Authorization: auth, "Content-Type": "application/json"}, body: "{}"}),
    unauthenticated: () => fetch(base + "/jmap/session"),
  };
  for (const [name, attempt] of Object.entries(tries)) {
    try { out[name] = "answered " + (await attempt()).status; }
    catch (e) { out[name] = e.name; }
  }
  return out;
}"""

OPEN_STREAM = """(url) => new Promise((resolve) => {
  window.events = [];
  const es = new EventSource(url);
  es.addEventListener("state", (e) => window.events.push({data: e.data, id: e.lastEventId}));
  es.onopen = () => resolve("open");
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) resolve("refused"); };
})"""


@dataclass
class Setup:
    daemon: DaemonProcess
    allowed: OriginServer
    other: OriginServer
    token: str
    page: Any  # a fresh browser page per test

    def page_from(self, server: OriginServer) -> Page:
        page: Page = self.page
        page.goto(server.origin + "/")
        return page

    def es_url(self) -> str:
        return (f"{self.daemon.base}/jmap/eventsource/?types=*&closeafter=no&ping=0"
                f"&access_token={self.token}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser()
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    require_browser()
    with OriginServer() as allowed, OriginServer() as other:
        d = started_daemon(tmp_path_factory.mktemp("cors"), f"cors-origins = {allowed.origin}",
                           "alice", "s3cret", ACCOUNT,
                           sections={"event-source": "event-source-throttle = 0"})
        try:
            token = d.ctl("token", "create", "alice").stdout.strip()
            yield d, allowed, other, token
        finally:
            d.stop()


@pytest.fixture
def setup(browser: Any, servers: tuple[Any, ...]) -> Iterator[Setup]:
    context = browser.new_context()  # a fresh profile: no cached preflights
    try:
        daemon, allowed, other, token = servers
        yield Setup(daemon, allowed, other, token, context.new_page())
    finally:
        context.close()


def test_listed_origin_discovers_the_session_and_calls_the_api(setup: Setup) -> None:
    """fetch() with Authorization from a listed origin: /.well-known/jmap (its redirect
    followed), the session, Core/echo and PushSubscription/set create are readable, and
    so is a 401 with its WWW-Authenticate challenge (exposed)."""
    page = setup.page_from(setup.allowed)
    out = page.evaluate(CALLS, {"base": setup.daemon.base, "auth": AUTH})
    assert out["wellKnown"] == {"status": 200, "url": setup.daemon.base + "/jmap/session",
                                "username": "alice"}
    assert out["session"]["status"] == 200 and out["session"]["username"] == "alice"
    assert out["api"]["status"] == 200
    [echo, created] = out["api"]["body"]["methodResponses"]
    assert echo == ["Core/echo", {"hello": "browser"}, "e"]
    assert created[0] == "PushSubscription/set" and "c" in created[1]["created"], created
    assert out["unauthorized"]["status"] == 401 and out["unauthorized"]["problem"] == 401
    assert "Basic" in (out["unauthorized"]["challenge"] or "")


def test_listed_origin_reads_the_event_stream(setup: Setup) -> None:
    """An EventSource from a listed origin (access_token query) receives a publish."""
    page = setup.page_from(setup.allowed)
    assert page.evaluate(OPEN_STREAM, setup.es_url()) == "open"
    admin_publish(setup.daemon, {ACCOUNT: {"Email": "from-the-browser-test"}})
    page.wait_for_function("window.events.length > 0", timeout=TIMEOUT_MS)
    [event] = page.evaluate("window.events")
    assert '"Email":"from-the-browser-test"' in event["data"] and event["id"]


def test_unlisted_origin_is_refused_by_the_browser(setup: Setup) -> None:
    """From an origin that is not listed, the browser refuses every answer (fetch fails
    with a TypeError) and the EventSource never opens."""
    page = setup.page_from(setup.other)
    out = page.evaluate(REFUSED, {"base": setup.daemon.base, "auth": AUTH})
    assert out == {"session": "TypeError", "wellKnown": "TypeError", "api": "TypeError",
                   "unauthenticated": "TypeError"}
    assert page.evaluate(OPEN_STREAM, setup.es_url()) == "refused"
