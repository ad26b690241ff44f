"""Gateway mode: live connections' credentials asked about again at the upstream.

The upstream is an in-memory session resource behind treq's RequestTraversalAgent (it can
refuse a password, list other accounts, be down, or hold its answers so that the test sees
how many are in flight); time is a MemoryReactorClock. Logins go through the real
Authenticator with the gateway's checker and realm over a MemoryStore, and connections are
small registry members holding their login's Principal, as the transports' members do.
The credential-change rules are WS-6 / C-WS-5 (a revoked credential closes with 1008) and
PS-7 (push subscriptions follow their owner's grants), applied to the upstream's word.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, cast

from treq.testing import RequestTraversalAgent
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from jmappushd.auth.authenticator import (
    Authenticator,
    Principal,
    PrincipalSource,
    UpstreamIdentity,
)
from jmappushd.config import UpstreamConfig
from jmappushd.core.connections import ConnectionRegistry, EndReason
from jmappushd.gateway.auth import SHADOW_PREFIX, UpstreamChecker, UpstreamRealm, UpstreamSessions
from jmappushd.gateway.revalidate import Revalidator, revalidation_period
from jmappushd.gateway.upstream import UpstreamClient
from jmappushd.reactor import IDaemonReactor
from jmappushd.store.memory import MemoryStore
from jmappushd.store.records import Account
from tests.store_backends import fired
from tests.support import log_into, no_threads

MAIL = "urn:ietf:params:jmap:mail"
SESSION_URL = "http://upstream.test/jmap/"
TTL = 5.0


def session_of(user: str, accounts: list[str]) -> dict[str, Any]:
    return {
        "username": user, "apiUrl": "/jmap/", "downloadUrl": "/jmap/download/",
        "uploadUrl": "/jmap/upload/", "state": "s-" + "-".join(accounts),
        "capabilities": {"urn:ietf:params:jmap:core": {}, MAIL: {}},
        "accounts": {a: {"name": a, "isPersonal": a == user,
                         "accountCapabilities": {MAIL: {}}} for a in accounts},
        "primaryAccounts": {MAIL: user},
    }


class Upstream(Resource):
    """The upstream's session resource: Basic logins against ``passwords``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.passwords = {"alice": "alice-pw", "bob": "bob-pw"}
        self.accounts = {"alice": ["alice"], "bob": ["bob"]}
        self.down = False
        self.hold = False
        self.held: list[tuple[Request, bytes]] = []
        self.answered = 0
        self.most_held = 0

    def render_GET(self, request: Request) -> bytes | int:
        self.answered += 1
        if self.down:
            request.setResponseCode(503)
            return b"maintenance"
        raw = (request.getHeader("authorization") or "").removeprefix("Basic ")
        user, _, password = base64.b64decode(raw).decode().partition(":")
        if self.passwords.get(user) != password:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="upstream"')
            body = b""
        else:
            request.setHeader(b"content-type", b"application/json")
            body = json.dumps(session_of(user, self.accounts[user])).encode()
        if self.hold:
            self.held.append((request, body))
            self.most_held = max(self.most_held, len(self.held))
            return NOT_DONE_YET
        return body

    def release(self) -> None:
        held, self.held = self.held, []
        for request, body in held:
            request.write(body)
            request.finish()


@dataclass(eq=False)
class Conn:
    """A live connection as the registries see it (EventStream, WebSocket)."""

    registry: ConnectionRegistry[Conn]
    principal: Principal
    account_ids: frozenset[str] = frozenset()
    ended: list[EndReason] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.account_ids = self.principal.account_ids

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def credential_id(self) -> str:
        return self.principal.credential_id

    @property
    def upstream(self) -> UpstreamIdentity | None:
        return self.principal.upstream

    def end(self, reason: EndReason) -> None:
        self.ended.append(reason)
        self.registry.discard(self)

    def grants_changed(self, accounts: tuple[Account, ...]) -> None:
        self.account_ids = frozenset(a.id for a in accounts)


class World:
    """Upstream, gateway logins, two registries (EventSource, WebSocket), the re-check."""

    def __init__(self, concurrency: int = 8, period: float | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.upstream = Upstream()
        self.agent = RequestTraversalAgent(self.upstream)
        self.store = MemoryStore()
        self.result(self.store.open())
        self.client = UpstreamClient(cast(IDaemonReactor, self.reactor),
                                     UpstreamConfig(session_url=SESSION_URL),
                                     max_body=100_000, agent=self.agent)
        self.sessions = UpstreamSessions(self.client, SESSION_URL, self.reactor, TTL)
        self.realm = UpstreamRealm(self.sessions, self.store)
        self.auth = Authenticator(self.store, self.reactor, no_threads, TTL,
                                  principals=PrincipalSource(
                                      self.realm, (UpstreamChecker(self.sessions),)))
        self.streams: ConnectionRegistry[Conn] = ConnectionRegistry(self.store, "EventSource")
        self.sockets: ConnectionRegistry[Conn] = ConnectionRegistry(self.store, "WebSocket")
        self.auth.on_invalidate(self.streams.invalidate)
        self.auth.on_invalidate(self.sockets.invalidate)
        self.revalidator = Revalidator(
            self.reactor, self.sessions, self.realm, lambda: self.client.health.up,
            revalidation_period(TTL) if period is None else period,
            (self.streams, self.sockets), concurrency)
        self.revalidator.startService()
        self.generation_check()  # remember the generation

    def login(self, user: str, password: str | None = None, flush: bool = True) -> Principal:
        d = Deferred.fromCoroutine(self.auth.login(UsernamePassword(
            user.encode(), (password or f"{user}-pw").encode())))
        if flush:
            self.agent.flush()
        principal = self.result(d)
        assert isinstance(principal, Principal)
        return principal

    def open(self, registry: ConnectionRegistry[Conn], user: str,
             password: str | None = None, flush: bool = True) -> Conn:
        conn = Conn(registry, self.login(user, password, flush))
        registry.add(conn)
        return conn

    def generation_check(self) -> None:
        """The authenticator's poll of the store's auth generation (every 2 s in the daemon)."""
        self.result(Deferred.fromCoroutine(self.auth.check_generation()))

    def pass_due(self) -> None:
        """Let the period pass and the upstream answer what it was asked."""
        self.reactor.advance(self.revalidator.period)
        self.agent.flush()

    result = staticmethod(fired)  # the Deferred has fired: its result, or its failure raised


def test_the_period_is_the_cache_ttl_within_one_to_thirty_seconds() -> None:
    assert revalidation_period(5) == 5
    assert revalidation_period(0) == 1
    assert revalidation_period(60) == 30


def test_no_timer_while_no_gateway_connection_is_open() -> None:
    """Idle is free: nothing is scheduled until a connection joins, and the pass that
    finds none left does not schedule another."""
    world = World()
    assert world.reactor.getDelayedCalls() == []
    world.login("alice")  # an API request: no connection, no timer
    assert world.reactor.getDelayedCalls() == []
    conn = world.open(world.streams, "alice")
    assert world.revalidator.armed and len(world.reactor.getDelayedCalls()) == 1
    world.open(world.sockets, "alice")
    assert len(world.reactor.getDelayedCalls()) == 1  # one timer for the daemon
    world.pass_due()
    assert world.revalidator.passes == 1 and world.revalidator.armed
    conn.end(EndReason.SHUTDOWN)
    for member in world.sockets.members():
        member.end(EndReason.SHUTDOWN)
    world.pass_due()
    assert world.revalidator.passes == 2
    assert not world.revalidator.armed and world.reactor.getDelayedCalls() == []
    world.open(world.streams, "bob")
    assert world.revalidator.armed


def test_a_refused_credential_ends_exactly_its_connections() -> None:
    """alice's password changes upstream: her stream and socket opened with the old one end
    with REVOKED (1008 on a WebSocket), the one with her new password and bob's stay, and
    the old credential leaves the login cache (the next login with it asks again: 401)."""
    world = World()
    old_es = world.open(world.streams, "alice")
    old_ws = world.open(world.sockets, "alice")
    bob = world.open(world.streams, "bob")
    world.upstream.passwords["alice"] = "new-pw"
    new_ws = world.open(world.sockets, "alice", "new-pw")
    asked = world.upstream.answered
    world.pass_due()
    assert world.upstream.answered == asked + 3  # three distinct credentials, one each
    assert old_es.ended == [EndReason.REVOKED] and old_ws.ended == [EndReason.REVOKED]
    assert bob.ended == [] and new_ws.ended == []
    assert world.streams.members() == [bob] and world.sockets.members() == [new_ws]
    old = base64.b64encode(b"alice:alice-pw")
    assert world.sessions.entry(world.sessions.key(b"Basic " + old)) is None
    d = Deferred.fromCoroutine(world.auth.login(UsernamePassword(b"alice", b"alice-pw")))
    world.agent.flush()
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and world.upstream.answered == asked + 4


def test_connections_of_one_credential_cost_one_upstream_request() -> None:
    world = World()
    for _ in range(3):
        world.open(world.streams, "alice")
    world.open(world.sockets, "alice")
    asked = world.upstream.answered
    world.pass_due()
    assert world.upstream.answered == asked + 1


def test_a_connection_opened_during_the_pass_with_the_refused_credential_ends_too() -> None:
    """A login the cache answered while the pass waited for the upstream's 401 (the cache
    outlives the period here) is ended when the pass has its answers."""
    world = World(period=1.0)
    first = world.open(world.streams, "alice")
    world.upstream.passwords["alice"] = "new-pw"
    world.upstream.hold = True
    world.reactor.advance(1.0)  # the pass asks; the answer is not in yet
    assert len(world.upstream.held) == 1
    late = world.open(world.sockets, "alice", flush=False)  # served from the cache
    assert late.upstream is first.upstream and late.ended == []
    world.upstream.release()
    world.agent.flush()
    assert first.ended == [EndReason.REVOKED] and late.ended == [EndReason.REVOKED]


def test_changed_accounts_move_the_grants_and_every_connection_follows() -> None:
    """A shared account granted upstream: the pass brings the shadow user's grants in step,
    the store's auth generation moves, and the shared FOLLOW path updates the members
    (Web Push subscriptions follow the same grants, PS-7); a revoke is followed the same way."""
    world = World()
    es = world.open(world.streams, "alice")
    ws = world.open(world.sockets, "alice")
    world.upstream.accounts["alice"] = ["alice", "bob"]
    world.pass_due()
    shadow = world.result(world.store.get_user(SHADOW_PREFIX + "alice"))
    assert shadow is not None
    granted = world.result(world.store.accounts_for_user(shadow.id))
    assert {a.id for a in granted} == {"alice", "bob"}
    world.generation_check()
    assert es.account_ids == {"alice", "bob"} and ws.account_ids == {"alice", "bob"}
    assert es.ended == [] and ws.ended == []
    world.upstream.accounts["alice"] = ["alice"]
    world.pass_due()
    world.generation_check()
    assert es.account_ids == {"alice"} and ws.account_ids == {"alice"}


def test_an_outage_keeps_everything_and_stops_the_pass() -> None:
    """Upstream down: no connection ends, the rest of the pass is skipped (one request, not
    one per credential), the outage is logged once; the next pass after it is back checks
    every credential again."""
    world = World(concurrency=1)  # one at a time: the first outage stops the rest
    conns = [world.open(world.streams, "alice"), world.open(world.streams, "bob"),
             world.open(world.sockets, "alice")]
    world.upstream.down = True
    events: list[Any] = []
    observer = log_into(events)
    globalLogPublisher.addObserver(observer)
    try:
        asked = world.upstream.answered
        world.pass_due()
        assert world.upstream.answered == asked + 1
        world.pass_due()
        assert world.upstream.answered == asked + 2
    finally:
        globalLogPublisher.removeObserver(observer)
    outages = [e for e in events if "unavailable" in str(e.get("log_format", ""))]
    assert len(outages) == 1
    assert all(c.ended == [] for c in conns) and world.revalidator.armed
    world.upstream.down = False
    world.pass_due()
    assert world.upstream.answered == asked + 4
    assert all(c.ended == [] for c in conns)


def test_at_most_eight_session_requests_in_flight() -> None:
    """Bounded concurrency: 20 distinct credentials, never more than 8 asked at once, all
    asked in the end."""
    world = World()
    for n in range(20):
        name = f"user{n}"
        world.upstream.passwords[name] = f"{name}-pw"
        world.upstream.accounts[name] = [name]
        world.open(world.streams, name)
    world.upstream.hold = True
    asked = world.upstream.answered
    world.reactor.advance(world.revalidator.period)
    while world.upstream.answered < asked + 20:
        world.agent.flush()
        assert 0 < len(world.upstream.held) <= 8
        world.upstream.release()
    world.agent.flush()
    world.upstream.release()
    world.agent.flush()
    assert world.upstream.most_held == 8
    assert world.upstream.answered == asked + 20
    assert world.revalidator.armed  # the next pass is due


def test_stopping_cancels_the_timer() -> None:
    world = World()
    world.open(world.streams, "alice")
    assert world.revalidator.armed
    world.result(world.revalidator.stopService())
    assert world.reactor.getDelayedCalls() == []
