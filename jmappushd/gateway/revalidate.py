"""Gateway mode: the upstream asked again about the credentials of live connections.

A gateway login is checked by the upstream when a connection opens. Without a second look,
a password changed or a user deleted upstream would keep its EventSource streams and
WebSockets (and their pushes) until the client reconnects, and a shared account granted or
revoked upstream would not be followed. So, while any gateway connection is open, every
``[auth] cache-ttl`` seconds (clamped to 1-30 s) each distinct credential among them fetches
the upstream session again, bypassing the login cache, at most 8 at once:

* 401/403: every connection opened with that credential ends (WebSocket 1008, as for a
  revoked token; EventSource stream finished) and the credential leaves the login cache;
* 200: the answer replaces the cached session and the realm builds the Principal from it,
  which brings the shadow user's grants in step with the accounts it lists; if they
  changed, the store's auth generation moves and the one FOLLOW path of every transport
  (Web Push included) follows;
* upstream unavailable: everything stays; the client logs the outage once. The rest of the
  pass is skipped, so an outage costs one timeout per pass rather than one per credential.

One timer for the daemon, armed when a connection joins and not armed again by a pass that
finds none: idle costs nothing. A connection is matched to its credential through its
login's ``upstream`` identity, the one reference a stream keeps for this; the Authorization
is read from it, never copied anywhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from jmappushd.auth.authenticator import UpstreamIdentity
from jmappushd.core.connections import EndReason
from jmappushd.gateway.auth import (
    UpstreamLoginRejected,
    UpstreamRealm,
    UpstreamSessions,
    UpstreamUnavailableLogin,
)

__all__ = ["CONCURRENCY", "LiveConnections", "Revalidator", "UpstreamMember",
           "revalidation_period"]

CONCURRENCY = 8  # session fetches in flight at once
MIN_PERIOD, MAX_PERIOD = 1.0, 30.0  # s


def revalidation_period(cache_ttl: float) -> float:
    """Seconds between passes: the login cache's lifetime, at least 1 s, at most 30 s."""
    return min(max(cache_ttl, MIN_PERIOD), MAX_PERIOD)


class UpstreamMember(Protocol):
    """What the re-check needs of a live connection (EventSource stream, WebSocket)."""

    @property
    def upstream(self) -> UpstreamIdentity | None: ...

    def end(self, reason: EndReason) -> None: ...


class LiveConnections(Protocol):
    """A transport's connection registry, as the re-check sees it."""

    def members(self) -> Sequence[UpstreamMember]: ...

    def on_join(self, callback: Callable[[UpstreamMember], None]) -> None: ...

    def end_where(self, predicate: Callable[[UpstreamMember], bool], reason: EndReason
                  ) -> int: ...


@dataclass(slots=True)
class _Credential:
    """One distinct credential of a pass and the connections opened with it."""

    identity: UpstreamIdentity
    members: list[UpstreamMember] = field(default_factory=list)


class Revalidator(Service):
    """Re-checks the credentials of live gateway connections with the upstream."""

    log = Logger()

    def __init__(self, clock: IReactorTime, sessions: UpstreamSessions, realm: UpstreamRealm,
                 upstream_up: Callable[[], bool], period: float,
                 connections: Sequence[LiveConnections], concurrency: int = CONCURRENCY
                 ) -> None:
        """``upstream_up`` (the upstream client's health) tells one user's unusable answer
        from an outage."""
        self._clock = clock
        self._sessions = sessions
        self._realm = realm
        self._upstream_up = upstream_up
        self.period = period
        self._connections = tuple(connections)
        self._concurrency = max(1, concurrency)
        self._timer: IDelayedCall | None = None
        self._passing = False
        self.passes = 0
        for registry in self._connections:
            registry.on_join(self._joined)

    def startService(self) -> None:
        super().startService()
        if any(self._live()):
            self._arm()

    def stopService(self) -> Deferred[None]:
        """Cancel the timer; a pass under way asks nothing more and changes nothing more
        (its fetches in flight are bounded by the upstream timeout)."""
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return defer.succeed(None)

    @property
    def armed(self) -> bool:
        """True while the pass timer is scheduled."""
        return self._timer is not None

    def _joined(self, member: UpstreamMember) -> None:
        if member.upstream is not None and not self._passing:
            self._arm()

    def _arm(self) -> None:
        if self.running and self._timer is None:
            self._timer = self._clock.callLater(self.period, self._due)

    def _due(self) -> None:
        self._timer = None
        self._passing = True
        d = Deferred.fromCoroutine(self.run_pass())
        d.addErrback(lambda f: self.log.failure("Re-checking upstream credentials failed", f))
        d.addBoth(self._passed)

    def _passed(self, _: object) -> None:
        self._passing = False
        if any(self._live()):
            self._arm()

    def _live(self) -> Iterator[UpstreamMember]:
        for registry in self._connections:
            for member in registry.members():
                if member.upstream is not None:
                    yield member

    async def run_pass(self) -> None:
        """Ask the upstream about every distinct credential of the live connections."""
        self.passes += 1
        by_identity: dict[UpstreamIdentity, list[UpstreamMember]] = {}
        for member in self._live():
            identity = member.upstream
            assert identity is not None
            by_identity.setdefault(identity, []).append(member)
        credentials: dict[str, _Credential] = {}
        for identity, members in by_identity.items():
            credential = credentials.setdefault(self._sessions.key(identity.authorization),
                                                _Credential(identity))
            credential.members.extend(members)
        run = _Pass(iter(list(credentials.items())))
        workers = min(self._concurrency, len(credentials))
        await defer.gatherResults([Deferred.fromCoroutine(self._work(run))
                                   for _ in range(workers)])
        if run.refused and self.running:
            self._sweep(run.refused, by_identity)

    async def _work(self, run: _Pass) -> None:
        for key, credential in run.todo:
            if run.down or not self.running:
                return
            try:
                outcome = await self._check(key, credential)
            except Exception:
                self.log.failure("Re-checking the credentials of {user} failed",
                                 user=credential.identity.session.username)
                continue
            if outcome is _Outcome.REFUSED:
                run.refused.add(key)
            elif outcome is _Outcome.DOWN:
                run.down = True

    async def _check(self, key: str, credential: _Credential) -> _Outcome:
        try:
            await self._sessions.refresh(credential.identity.authorization)
        except UpstreamLoginRejected as e:
            if self.running:
                self._refused(key, credential, e.status)
            return _Outcome.REFUSED
        except UpstreamUnavailableLogin:
            # One user's unusable session (kept as it is), or an outage (the client has
            # logged it; the rest of the pass would only wait for timeouts).
            return _Outcome.KEPT if self._upstream_up() else _Outcome.DOWN
        if self.running:
            await self._realm.principal(key)  # the shadow user's grants follow its accounts
        return _Outcome.KEPT

    def _refused(self, key: str, credential: _Credential, status: int) -> None:
        self._realm.forget(key)
        for member in credential.members:
            member.end(EndReason.REVOKED)
        self.log.info("The upstream refused the credentials of {user} ({status}): ending "
                      "{count} connections opened with them",
                      user=credential.identity.session.username, status=status,
                      count=len(credential.members))

    def _sweep(self, refused: set[str], seen: dict[UpstreamIdentity, list[UpstreamMember]]
               ) -> None:
        """End what joined during the pass with a credential the pass saw refused (a
        login the cache answered before the refusal arrived)."""
        checked = {m for members in seen.values() for m in members}
        keys: dict[UpstreamIdentity, str] = {}

        def joined_refused(member: UpstreamMember) -> bool:
            identity = member.upstream
            if identity is None or member in checked:
                return False
            key = keys.get(identity)
            if key is None:
                key = keys[identity] = self._sessions.key(identity.authorization)
            return key in refused

        for registry in self._connections:
            registry.end_where(joined_refused, EndReason.REVOKED)


class _Outcome(enum.Enum):
    KEPT = "kept"
    REFUSED = "refused"
    DOWN = "down"


class _Pass:
    """The credentials of one pass, shared by its workers."""

    def __init__(self, todo: Iterator[tuple[str, _Credential]]) -> None:
        self.todo = todo
        self.down = False
        self.refused: set[str] = set()
