"""CORS on the JMAP tree: the policy's headers and the gate in front of every endpoint.

The gate is driven through the daemon's real resource tree and a real Site in memory
(treq's StubTreq), with the memory store and a bearer token, so every answer —
preflight, 200, 401, problem — is the one a browser would get.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.auth.passwords import token_digest
from jmappushd.config import Config, parse_config
from jmappushd.daemon.service import build_app
from jmappushd.store import MemoryStore
from jmappushd.transports.eventsource.registry import StreamRegistry
from jmappushd.transports.eventsource.resource import EventSourceResource
from jmappushd.transports.websocket.factory import JMAPWebSocketFactory
from jmappushd.transports.websocket.handshake import HandshakeResource
from jmappushd.web.cors import CorsPolicy
from jmappushd.web.root import build_root
from tests.support import no_threads

APP = "https://app.example.com"
TOKEN = "jmp_cors-test"
CORE = "urn:ietf:params:jmap:core"


def request(origin: str | None, method: bytes = b"GET") -> Request:
    """A real (unprocessed) Request: CorsPolicy takes one."""
    r = Request(DummyChannel())
    r.method = method
    if origin is not None:
        r.requestHeaders.setRawHeaders(b"Origin", [origin.encode()])
    return r


def header(r: Request, name: bytes) -> bytes | None:
    values = r.responseHeaders.getRawHeaders(name)
    return None if values is None else values[-1]


# -- the policy ----------------------------------------------------------------------------


def test_no_cors_headers_without_configuration() -> None:
    """Empty cors-origins: nothing is added, same-origin only."""
    r = request(APP)
    assert not CorsPolicy(()).apply(r)
    assert list(r.responseHeaders.getAllRawHeaders()) == []


def test_listed_origin_is_echoed_without_credentials() -> None:
    """A listed origin is echoed with Vary: Origin and the exposed headers; credentials
    (cookies, browser-held HTTP auth) are never allowed: JMAP clients send their own
    Authorization header, which needs no Allow-Credentials."""
    r = request(APP)
    assert CorsPolicy((APP,)).apply(r)
    assert header(r, b"Access-Control-Allow-Origin") == APP.encode()
    assert header(r, b"Access-Control-Allow-Credentials") is None
    assert header(r, b"Vary") == b"Origin"
    exposed = header(r, b"Access-Control-Expose-Headers") or b""
    assert b"WWW-Authenticate" in exposed and b"Retry-After" in exposed


def test_wildcard_allows_any_origin() -> None:
    """A configured * answers * to an origin that is not listed by name."""
    r = request("https://other.example")
    assert CorsPolicy((APP, "*")).apply(r)
    assert header(r, b"Access-Control-Allow-Origin") == b"*"


def test_unlisted_origin_gets_only_vary() -> None:
    """An origin that is not listed gets Vary but no Allow-Origin; so does no Origin."""
    for origin in ("https://evil.example", None):
        r = request(origin)
        assert not CorsPolicy((APP,)).apply(r)
        assert header(r, b"Access-Control-Allow-Origin") is None
        assert header(r, b"Vary") == b"Origin"


def test_vary_is_merged_not_replaced() -> None:
    """An existing Vary keeps its names; Origin is added once."""
    r = request(APP)
    r.responseHeaders.setRawHeaders(b"Vary", [b"Accept-Encoding"])
    policy = CorsPolicy((APP,))
    policy.apply(r)
    policy.apply(r)
    assert r.responseHeaders.getRawHeaders(b"Vary") == [b"Accept-Encoding", b"Origin"]


def test_preflight_offers_the_endpoints_methods_and_the_jmap_headers() -> None:
    """A preflight is approved with the endpoint's methods, the request headers JMAP
    clients send (Authorization, Content-Type, Last-Event-ID, ...) and a Max-Age."""
    r = request(APP, b"OPTIONS")
    r.requestHeaders.setRawHeaders(b"Access-Control-Request-Method", [b"POST"])
    CorsPolicy((APP,)).preflight(r, (b"POST",))
    assert r.code == 204
    assert header(r, b"Access-Control-Allow-Origin") == APP.encode()
    assert header(r, b"Access-Control-Allow-Methods") == b"POST"
    allowed = header(r, b"Access-Control-Allow-Headers") or b""
    for name in (b"Authorization", b"Content-Type", b"Last-Event-ID", b"Cache-Control"):
        assert name in allowed
    assert header(r, b"Access-Control-Max-Age") == b"600"
    assert header(r, b"Access-Control-Allow-Credentials") is None
    assert header(r, b"Allow") == b"POST, OPTIONS"


def test_preflight_from_unlisted_origin_is_not_approved() -> None:
    """No Allow-Origin, so the browser refuses the actual request."""
    r = request("https://evil.example", b"OPTIONS")
    CorsPolicy((APP,)).preflight(r)
    assert r.code == 204
    assert header(r, b"Access-Control-Allow-Origin") is None
    assert header(r, b"Access-Control-Allow-Methods") is None


# -- the gate in front of the JMAP tree -----------------------------------------------------


class Tree:
    """The daemon's JMAP tree (with the EventSource and WebSocket children) in memory."""

    def __init__(self, tmp_path: Path, origins: str = APP) -> None:
        store = MemoryStore()
        store.open()
        store.add_user("alice", "hash", "A")
        store.create_token("alice", token_digest(TOKEN))
        config = _config(tmp_path, origins)
        self.clock = Clock()
        app = build_app(config, self.clock, store, no_threads)
        defer.ensureDeferred(app.hub.start())
        eventsource = EventSourceResource(app, self.clock, StreamRegistry(store))
        handshake = HandshakeResource(app, JMAPWebSocketFactory(app, self.clock))
        self.client: Any = StubTreq(build_root(app, {b"eventsource": eventsource,
                                                b"ws": handshake}))

    def call(self, method: str, path: str, origin: str | None = APP, body: bytes = b"",
             headers: dict[str, str] | None = None, **named: str) -> tuple[Any, bytes]:
        """``named`` headers are spelled with underscores for dashes."""
        sent = {name.replace("_", "-"): value for name, value in named.items()}
        sent.update(headers or {})
        if origin is not None:
            sent["Origin"] = origin
        d = self.client.request(method, "http://127.0.0.1:8080" + path, headers=sent,
                                data=body or None, allow_redirects=False)
        self.client.flush()
        response = _result(d)
        content = _result(response.content())
        return response, content


def _config(tmp_path: Path, origins: str) -> Config:
    text = (f"[server]\npublic-url = http://127.0.0.1:8080\nstate-dir = {tmp_path}\n"
            f"cors-origins = {origins}\n")
    return parse_config(text, str(tmp_path / "cors.ini"), environ={})


def _result(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the response did not complete"
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def got(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return None if values is None else values[-1]


@pytest.mark.parametrize("path, method", [
    ("/jmap/session", "GET"),
    ("/jmap/api/", "POST"),
    ("/.well-known/jmap", "GET"),
    ("/jmap/eventsource/?types=*&closeafter=no&ping=0", "GET"),
    ("/jmap/upload/A/", "POST"),
])
def test_every_jmap_endpoint_answers_the_preflight(tmp_path: Path, path: str, method: str
                                                    ) -> None:
    """A browser preflight (OPTIONS with Access-Control-Request-Headers: authorization)
    gets 204 with the endpoint's method, without credentials (it was 501 for the session,
    the API and /.well-known/jmap)."""
    response, _ = Tree(tmp_path).call(
        "OPTIONS", path, Access_Control_Request_Method=method,
        Access_Control_Request_Headers="authorization, content-type")
    assert response.code == 204
    assert got(response, "Access-Control-Allow-Origin") == APP
    assert got(response, "Access-Control-Allow-Methods") == method
    assert "Authorization" in (got(response, "Access-Control-Allow-Headers") or "")
    assert got(response, "Vary") == "Origin"


def test_actual_responses_carry_the_headers_whatever_their_status(tmp_path: Path) -> None:
    """200 (session, API), 401 (with its challenge exposed), a problem response (notJSON)
    and a 404 under /jmap all let the page read them."""
    tree = Tree(tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    session, body = tree.call("GET", "/jmap/session", headers=auth)
    assert session.code == 200 and b'"username":"alice"' in body
    echo, body = tree.call("POST", "/jmap/api/", Content_Type="application/json",
                           body=b'{"using":["%s"],"methodCalls":[["Core/echo",{},"0"]]}'
                           % CORE.encode(), headers=auth)
    assert echo.code == 200 and b"Core/echo" in body
    unauthorized, _ = tree.call("GET", "/jmap/session")
    assert unauthorized.code == 401
    not_json, _ = tree.call("POST", "/jmap/api/", Content_Type="text/plain", body=b"x",
                            headers=auth)
    assert not_json.code == 400
    missing, _ = tree.call("GET", "/jmap/nothing-here")
    assert missing.code == 404
    redirect, _ = tree.call("GET", "/.well-known/jmap")
    assert redirect.code == 307
    for response in (session, echo, unauthorized, not_json, missing, redirect):
        assert got(response, "Access-Control-Allow-Origin") == APP, response.code
        assert got(response, "Vary") == "Origin"
    assert "WWW-Authenticate" in (got(unauthorized, "Access-Control-Expose-Headers") or "")


def test_event_stream_carries_the_headers(tmp_path: Path) -> None:
    """The EventSource response is behind the same gate as the rest of the API."""
    tree = Tree(tmp_path, "*")
    d = tree.client.request("GET", "http://127.0.0.1:8080/jmap/eventsource/?types=*"
                            "&closeafter=no&ping=0", headers={
                                "Origin": "https://any.example",
                                "Authorization": f"Bearer {TOKEN}"})
    tree.client.flush()
    response = _result(d)
    assert response.code == 200
    assert got(response, "Access-Control-Allow-Origin") == "*"


def test_websocket_handshake_is_not_behind_the_gate(tmp_path: Path) -> None:
    """The handshake keeps its own Origin check ([websocket] allowed-origins): no CORS
    headers there, and OPTIONS is not answered as a preflight."""
    tree = Tree(tmp_path)
    response, _ = tree.call("GET", "/jmap/ws")
    assert response.code == 426
    assert got(response, "Access-Control-Allow-Origin") is None
    response, _ = tree.call("OPTIONS", "/jmap/ws", Access_Control_Request_Method="GET")
    assert response.code == 405


def test_without_origins_options_is_answered_but_not_approved(tmp_path: Path) -> None:
    """No cors-origins (the default): OPTIONS gets 204 with Allow (not 501) and no CORS
    approval, so browsers keep pages on other origins out."""
    response, _ = Tree(tmp_path, "").call("OPTIONS", "/jmap/api/",
                                           Access_Control_Request_Method="POST")
    assert response.code == 204
    assert got(response, "Allow") == "POST, OPTIONS"
    assert got(response, "Access-Control-Allow-Origin") is None
    assert got(response, "Vary") is None
