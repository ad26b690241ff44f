"""The upstream client over TLS (a private CA via ca-file) and the login cache's sharing."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Site

from jmappushd.config import UpstreamConfig
from jmappushd.gateway.auth import UpstreamSessions, authorization_of
from jmappushd.gateway.upstream import UpstreamClient, UpstreamResponse, UpstreamUnavailable
from tests.support import live_reactor
from tests.tls_files import write_pair


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"ok": true}'


@pytest_twisted.inlineCallbacks
def test_a_private_ca_upstream_needs_ca_file(tmp_path: Path) -> Any:
    key, cert = write_pair(tmp_path)
    endpoint = serverFromString(live_reactor(), f"ssl:0:interface=127.0.0.1:privateKey={key}"
                                                f":certKey={cert}")
    port = yield endpoint.listen(Site(Hello()))
    url = f"https://localhost:{port.getHost().port}/jmap/"
    try:
        trusted = UpstreamClient(live_reactor(), UpstreamConfig(session_url=url,
                                                                ca_file=str(cert)), 10_000)
        answer = yield trusted.get(url, b"Basic eDp5")
        assert answer.status == 200 and answer.body == b'{"ok": true}'
        yield trusted.close()
        system = UpstreamClient(live_reactor(), UpstreamConfig(session_url=url), 10_000)
        with pytest.raises(UpstreamUnavailable, match="unreachable"):
            yield system.get(url, b"Basic eDp5")  # not in the system store: refused
        yield system.close()
    finally:
        yield port.stopListening()


class HeldClient:
    """An UpstreamClient stand-in whose session answers the test releases."""

    name = "http://upstream"

    def __init__(self) -> None:
        self.requests: list[defer.Deferred[UpstreamResponse]] = []

    def get(self, url: str, authorization: bytes) -> defer.Deferred[UpstreamResponse]:
        d: defer.Deferred[UpstreamResponse] = defer.Deferred()
        self.requests.append(d)
        return d


SESSION = (b'{"username":"alice","apiUrl":"/jmap/","downloadUrl":"/d/{accountId}/{blobId}/{name}",'
           b'"uploadUrl":"/u/{accountId}/","state":"1","capabilities":'
           b'{"urn:ietf:params:jmap:core":{}},"accounts":{"alice":{"name":"alice"}},'
           b'"primaryAccounts":{}}')


def test_identical_checks_share_one_upstream_request_and_are_cached() -> None:
    clock, client = Clock(), HeldClient()
    sessions = UpstreamSessions(client, "http://upstream/jmap/", clock, ttl=60)  # type: ignore[arg-type]
    auth = authorization_of(UsernamePassword(b"alice", b"pw"))
    assert auth == b"Basic " + base64.b64encode(b"alice:pw")
    waiting = [sessions.check(auth) for _ in range(50)]
    assert len(client.requests) == 1
    client.requests[0].callback(UpstreamResponse(200, b"application/json", SESSION))
    keys = {d.result for d in waiting}
    assert len(keys) == 1
    assert sessions.check(auth).result in keys and len(client.requests) == 1  # cached
    clock.advance(61)
    key = str(next(iter(keys)))
    assert sessions.entry(key) is not None
    evicted: list[str] = []
    sessions.on_evict(evicted.append)
    sessions.check(auth)
    assert len(client.requests) == 2  # the cache entry expired
    # ... and went, with the Authorization it held, before the new answer came.
    assert sessions.entry(key) is None and evicted == [key]
    other = sessions.check(authorization_of(UsernamePassword(b"alice", b"other")))
    assert len(client.requests) == 3 and not other.called
