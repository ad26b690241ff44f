"""Gateway logins: one Principal per checked upstream session, reused until it is refreshed.

Every API request and every connection logs in; in gateway mode the credentials are
checked against the upstream session (cached for ``[auth] cache-ttl``). The Principal
built from that session is kept with it, as the standalone realm keeps its own: the
session ``state`` the daemon puts in every response is memoized per Principal, so a new
Principal per request would merge and hash the whole upstream session on every request.
The upstream is an in-memory resource behind treq's RequestTraversalAgent, time a Clock.
"""

from __future__ import annotations

import json
from typing import Any, cast

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource
from twisted.web.server import Request

from jmappushd.auth.authenticator import IPrincipal, Principal
from jmappushd.config import UpstreamConfig
from jmappushd.gateway.auth import UpstreamRealm, UpstreamSessions
from jmappushd.gateway.upstream import UpstreamClient
from jmappushd.reactor import IDaemonReactor
from jmappushd.store.memory import MemoryStore
from tests.store_backends import fired

MAIL = "urn:ietf:params:jmap:mail"
SESSION_URL = "http://upstream.test/jmap/"
SESSION = {
    "username": "alice", "apiUrl": "/jmap/", "downloadUrl": "/jmap/download/",
    "uploadUrl": "/jmap/upload/", "state": "0",
    "capabilities": {"urn:ietf:params:jmap:core": {}, MAIL: {}},
    "accounts": {"alice": {"name": "alice", "isPersonal": True,
                           "accountCapabilities": {MAIL: {}}}},
    "primaryAccounts": {MAIL: "alice"},
}
AUTH = b"Basic YWxpY2U6YWxpY2UtcHc="
TTL = 60.0


class Sessions(Resource):
    """The upstream's session resource; counts the requests it answered."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answered = 0

    def render_GET(self, request: Request) -> bytes:
        self.answered += 1
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(SESSION).encode()


class Upstream:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resource = Sessions()
        self.agent = RequestTraversalAgent(self.resource)
        client = UpstreamClient(cast(IDaemonReactor, self.reactor),
                                UpstreamConfig(session_url=SESSION_URL), max_body=100_000,
                                agent=self.agent)
        self.sessions = UpstreamSessions(client, SESSION_URL, self.reactor, TTL)
        store = MemoryStore()
        self.result(store.open())
        self.realm = UpstreamRealm(self.sessions, store)

    def login(self) -> Principal:
        checked = self.sessions.check(AUTH)
        self.agent.flush()
        key = self.result(checked)
        avatar: Deferred[Any] = self.realm.requestAvatar(key, None, IPrincipal)
        _, principal, _ = self.result(avatar)
        assert isinstance(principal, Principal)
        return principal

    result = staticmethod(fired)  # the Deferred has fired: its result, or its failure raised


def test_logins_within_the_session_ttl_share_one_principal() -> None:
    """Same credentials, same checked session: the same Principal (one upstream fetch)."""
    upstream = Upstream()
    first = upstream.login()
    second = upstream.login()
    assert upstream.resource.answered == 1
    assert second is first
    assert first.username == "alice" and first.account_ids == {"alice"}
    assert first.upstream is not None and first.upstream.authorization == AUTH


def test_a_refreshed_session_gives_a_new_principal() -> None:
    """After the TTL the session is fetched again, and the Principal follows it."""
    upstream = Upstream()
    first = upstream.login()
    upstream.reactor.advance(TTL + 1)
    second = upstream.login()
    assert upstream.resource.answered == 2
    assert second is not first
    assert second.upstream is not None and first.upstream is not None
    assert second.upstream.session is not first.upstream.session


def test_clearing_the_realm_forgets_its_principals() -> None:
    """Credential invalidation (realm.clear) drops the kept Principals."""
    upstream = Upstream()
    first = upstream.login()
    upstream.realm.clear()
    assert upstream.login() is not first
