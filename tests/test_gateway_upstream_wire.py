"""What the gateway's upstream requests carry on the wire: the client's credentials only;
and what each costs the daemon before it is sent (one endpoint per upstream origin).

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
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorSSL
from twisted.internet.ssl import PrivateCertificate
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from jmappushd.config import UpstreamConfig
from jmappushd.gateway.endpoints import OriginEndpoints
from jmappushd.gateway.upstream import UpstreamClient, UpstreamUnavailable
from tests.push_receiver import make_certificate
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


@pytest_twisted.inlineCallbacks
def test_one_endpoint_per_upstream_origin(upstream: tuple[Recording, str],
                                          monkeypatch: pytest.MonkeyPatch) -> Any:
    """Requests reuse the origin's endpoint: twisted.web's standard factory built a new
    HostnameEndpoint (and, for https, a TLS creator) for every request."""
    made: list[object] = []
    original = HostnameEndpoint.__init__

    def counting(self: HostnameEndpoint, *args: Any, **kwargs: Any) -> None:
        made.append(args[1:3])
        original(self, *args, **kwargs)

    monkeypatch.setattr(HostnameEndpoint, "__init__", counting)
    resource, url = upstream
    client = UpstreamClient(live_reactor(), UpstreamConfig(session_url=url), max_body=100_000)
    try:
        for _ in range(3):
            yield client.post_json(url, basic("alice"), b"{}")
        yield client.get(url + "session", basic("alice"))
    finally:
        yield client.close()
    assert len(resource.seen) == 4
    assert len(made) == 1, made


def test_origin_endpoints_are_tls_for_https_and_refuse_other_schemes() -> None:
    """https gets the policy's TLS over TCP, per origin; other schemes are refused as the
    Agent expects (SchemeNotSupported becomes a failed request, not a traceback)."""
    policy = BrowserLikePolicyForHTTPS()
    endpoints = OriginEndpoints(live_reactor(), policy, 5.0)
    plain = endpoints.endpointForURI(URI.fromBytes(b"http://mail.example:8008/jmap/"))
    assert isinstance(plain, HostnameEndpoint)
    tls = endpoints.endpointForURI(URI.fromBytes(b"https://mail.example/jmap/"))
    assert not isinstance(tls, HostnameEndpoint)  # wrapped in TLS
    assert endpoints.endpointForURI(URI.fromBytes(b"https://mail.example/other")) is tls
    assert endpoints.made == 2
    with pytest.raises(SchemeNotSupported):
        endpoints.endpointForURI(URI.fromBytes(b"ftp://mail.example/"))


@pytest_twisted.inlineCallbacks
def test_an_https_upstream_with_a_private_ca(tmp_path: Path) -> Any:
    """TLS to the upstream, verified against ``ca-file``, over the per-origin endpoint;
    the system store does not know the private CA, so without it the upstream is an
    outage (a TLS failure), never an unverified connection."""
    cert_pem, key_pem, ca_file = make_certificate(tmp_path)
    resource = Recording()
    options = PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    port = IReactorSSL(live_reactor()).listenSSL(0, Site(resource), options,
                                                 interface="127.0.0.1")
    url = f"https://127.0.0.1:{port.getHost().port}/jmap/"  # type: ignore[attr-defined]
    trusted = UpstreamClient(live_reactor(), UpstreamConfig(session_url=url,
                                                            ca_file=str(ca_file)),
                             max_body=100_000)
    stranger = UpstreamClient(live_reactor(), UpstreamConfig(session_url=url),
                              max_body=100_000)
    try:
        for _ in range(2):
            answer = yield trusted.post_json(url, basic("alice"), b"{}")
            assert answer.status == 200 and answer.body == ANSWER
        with pytest.raises(UpstreamUnavailable):
            yield stranger.get(url, basic("alice"))
    finally:
        yield trusted.close()
        yield stranger.close()
        yield port.stopListening()
    assert len(resource.seen) == 2
