"""What the gateway's upstream requests carry on the wire: the client's credentials only.

A small twisted.web server on 127.0.0.1 records each request's headers and answers as an
upstream might: with a ``Set-Cookie`` for the user it just authenticated and, when the
request offers gzip, a compressed body. The gateway sends every user's requests over one
keep-alive pool, so nothing one user's answer sets may ride along another user's request,
and the hop (normally to a server on the same host or network) asks for no compression,
which costs CPU on both ends for every answer (Cyrus compresses a 500-byte Mailbox/get).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from jmappushd.config import UpstreamConfig
from jmappushd.gateway.upstream import UpstreamClient
from tests.support import live_reactor

ANSWER = json.dumps({"methodResponses": [["Mailbox/get", {"state": "1", "list": []}, "0"]],
                     "sessionState": "0"}).encode()


class Recording(Resource):
    """Answers every request; keeps the headers each one came with."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[bytes, list[bytes]]] = []

    def render(self, request: Request) -> bytes:
        self.seen.append({name.lower(): list(values)
                          for name, values in request.requestHeaders.getAllRawHeaders()})
        user = base64.b64decode((request.getHeader("authorization") or "Basic ")[6:])
        request.addCookie(b"session", base64.b16encode(user.split(b":")[0]), path=b"/")
        request.setHeader(b"content-type", b"application/json")
        if b"gzip" in (request.getHeader(b"accept-encoding") or b""):
            request.setHeader(b"content-encoding", b"gzip")
            return gzip.compress(ANSWER)
        return ANSWER


@pytest.fixture
def upstream() -> Iterator[tuple[Recording, str]]:
    resource = Recording()
    site = Site(resource)  # a ServerFactory of Twisted's untyped HTTP channels
    port: IListeningPort = live_reactor().listenTCP(0, site,  # type: ignore[arg-type]
                                                    interface="127.0.0.1")
    try:
        yield resource, f"http://127.0.0.1:{port.getHost().port}/jmap/"  # type: ignore[attr-defined]
    finally:
        port.stopListening()


def basic(user: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{user}-pw".encode())


@pytest_twisted.inlineCallbacks
def test_no_cookie_from_one_users_answer_reaches_another_users_request(
        upstream: tuple[Recording, str]) -> Any:
    """The upstream's Set-Cookie for alice is not replayed with bob's request (the pool is
    shared; each request carries only its own client's Authorization)."""
    resource, url = upstream
    client = UpstreamClient(live_reactor(), UpstreamConfig(session_url=url), max_body=100_000)
    try:
        yield client.post_json(url, basic("alice"), b"{}")
        answer = yield client.post_json(url, basic("bob"), b"{}")
    finally:
        yield client.close()
    assert answer.status == 200 and json.loads(answer.body) == json.loads(ANSWER)
    assert [h[b"authorization"] for h in resource.seen] == [[basic("alice")], [basic("bob")]]
    assert all(b"cookie" not in h for h in resource.seen), resource.seen


@pytest_twisted.inlineCallbacks
def test_the_upstream_is_not_asked_to_compress(upstream: tuple[Recording, str]) -> Any:
    """No Accept-Encoding: gzip, so the upstream spends no CPU compressing what the daemon
    would spend CPU decompressing; the answer arrives as sent."""
    resource, url = upstream
    client = UpstreamClient(live_reactor(), UpstreamConfig(session_url=url), max_body=100_000)
    try:
        answer = yield client.get(url, basic("alice"))
    finally:
        yield client.close()
    assert answer.body == ANSWER
    offered = b",".join(resource.seen[0].get(b"accept-encoding", []))
    assert b"gzip" not in offered
    assert resource.seen[0][b"accept"] == [b"application/json"]
