"""Live connections of one transport, by user: limits, shutdown and revalidation.

One :class:`ConnectionRegistry` per transport (EventSource and WebSocket have
separate per-user limits, so separate counts). It applies the one policy of
:mod:`jmappushd.core.revalidation` to every member when the authenticator says
credentials may have changed (``Authenticator.on_invalidate``): each user with
live members is looked up once, and each member is ended or made to follow its
user's new grants through the tiny :class:`Member` interface. Gateway mode's upstream
re-check (``gateway/revalidate.py``) watches members join (:meth:`~ConnectionRegistry.on_join`)
and ends those of a refused credential (:meth:`~ConnectionRegistry.end_where`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from twisted.internet import defer
from twisted.logger import Logger

from jmappushd.auth.authenticator import Principal
from jmappushd.core.revalidation import (
    Action,
    is_password,
    load_facts,
    password_fingerprint,
    verdict,
)
from jmappushd.store.interface import IStore
from jmappushd.store.records import Account, User


class EndReason(enum.Enum):
    """Why a transport is told to end a connection (WebSocket maps it to a close code)."""

    SHUTDOWN = "server shutting down"
    REVOKED = "credentials revoked"


class Member(Protocol):
    """What a transport's connection shows the registry."""

    @property
    def user_id(self) -> str: ...

    @property
    def credential_id(self) -> str: ...

    @property
    def account_ids(self) -> frozenset[str]: ...

    def end(self, reason: EndReason) -> None:
        """Finish the connection; it calls :meth:`ConnectionRegistry.discard` when gone."""

    def grants_changed(self, accounts: tuple[Account, ...]) -> None:
        """Listen to (and authorise requests for) exactly these accounts from now on."""


M = TypeVar("M", bound=Member)


class _UserEntry(Generic[M]):
    __slots__ = ("members", "password_fp")

    def __init__(self) -> None:
        self.members: dict[M, None] = {}
        self.password_fp: bytes | None = None


class ConnectionRegistry(Generic[M]):
    """Owns the index of live members; members report their own end via ``discard``."""

    log = Logger()

    def __init__(self, store: IStore, transport: str) -> None:
        self._store = store
        self.transport = transport
        self._users: dict[str, _UserEntry[M]] = {}
        self._count = 0
        self.closing = False
        self._revalidating = False
        self._again = False
        self._drained: list[defer.Deferred[None]] = []
        self._on_join: list[Callable[[M], None]] = []

    @property
    def count(self) -> int:
        """Live members (the listener gauge)."""
        return self._count

    def count_for(self, user_id: str) -> int:
        entry = self._users.get(user_id)
        return 0 if entry is None else len(entry.members)

    def members(self) -> list[M]:
        return [m for entry in self._users.values() for m in entry.members]

    async def password_fingerprint_for(self, principal: Principal) -> bytes | None:
        """The fingerprint to remember for a password member, when not yet known."""
        if not is_password(principal.credential_id):
            return None
        entry = self._users.get(principal.user_id)
        if entry is not None and entry.password_fp is not None:
            return None
        user = await self._store.get_user_by_id(principal.user_id)
        return None if user is None else password_fingerprint(user.password_hash)

    def add(self, member: M, password_fp: bytes | None = None) -> None:
        entry = self._users.get(member.user_id)
        if entry is None:
            entry = self._users[member.user_id] = _UserEntry()
        if entry.password_fp is None:
            entry.password_fp = password_fp
        if member not in entry.members:
            entry.members[member] = None
            self._count += 1
            for callback in self._on_join:
                callback(member)

    def on_join(self, callback: Callable[[M], None]) -> None:
        """Call ``callback`` with each member as it joins (a timer that runs only while
        there are members starts this way)."""
        self._on_join.append(callback)

    def end_where(self, predicate: Callable[[M], bool], reason: EndReason) -> int:
        """End every live member ``predicate`` picks; how many that was."""
        picked = [m for m in self.members() if predicate(m)]
        self._end(picked, reason)
        return len(picked)

    def remember_password(self, member: M) -> None:
        """Look the user's password fingerprint up in the background, if not yet known
        (for a transport that could not pass it to :meth:`add`)."""
        if not is_password(member.credential_id):
            return
        entry = self._users.get(member.user_id)
        if entry is None or entry.password_fp is not None:
            return
        d = self._store.get_user_by_id(member.user_id)
        d.addCallback(self._remembered, member.user_id)
        d.addErrback(lambda f: self.log.failure("password lookup failed", f))

    def _remembered(self, user: User | None, user_id: str) -> None:
        entry = self._users.get(user_id)
        if user is not None and entry is not None and entry.password_fp is None:
            entry.password_fp = password_fingerprint(user.password_hash)

    def discard(self, member: M) -> None:
        """Called by a member when it ends (any reason); forgets empty users."""
        entry = self._users.get(member.user_id)
        if entry is None or member not in entry.members:
            return
        del entry.members[member]
        self._count -= 1
        if not entry.members:
            del self._users[member.user_id]
        if not self._count and self._drained:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def when_empty(self) -> defer.Deferred[None]:
        """Fires once no member is left (at once if none is)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._count:
            self._drained.append(d)
        else:
            d.callback(None)
        return d

    def close_all(self) -> None:
        """Shutdown: refuse new members and end every live one."""
        self.closing = True
        members = self.members()
        if members:
            self.log.info("ending {count} {transport} connections for shutdown",
                          count=len(members), transport=self.transport)
        self._end(members, EndReason.SHUTDOWN)

    @staticmethod
    def _end(members: Iterable[M], reason: EndReason) -> None:
        for member in list(members):
            member.end(reason)

    # -- revalidation --

    def invalidate(self) -> None:
        """``Authenticator.on_invalidate`` callback: re-check in the background."""
        if self.closing:
            return
        d = defer.ensureDeferred(self.revalidate())
        d.addErrback(lambda f: self.log.failure("{transport} revalidation failed", f,
                                                transport=self.transport))

    async def revalidate(self) -> None:
        """Re-check every user with live members; runs again if invalidated meanwhile."""
        if self._revalidating:
            self._again = True
            return
        self._revalidating = True
        try:
            while True:
                self._again = False
                for user_id in list(self._users):
                    try:
                        await self._revalidate_user(user_id)
                    except Exception:
                        # One user's lookup failing must not leave the others unchecked;
                        # the next invalidation (the auth poll) tries this one again.
                        self.log.failure("{transport} revalidation of {user_id} failed",
                                         transport=self.transport, user_id=user_id)
                if not self._again or self.closing:
                    break
        finally:
            self._revalidating = False

    async def _revalidate_user(self, user_id: str) -> None:
        facts = await load_facts(self._store, user_id)
        entry = self._users.get(user_id)
        if entry is None:
            return  # every member left while the store was asked
        ended: dict[str, int] = {}
        for member in list(entry.members):
            found = verdict(member.credential_id, member.account_ids, facts, entry.password_fp)
            if found.action is Action.END:
                ended[found.why] = ended.get(found.why, 0) + 1
                member.end(EndReason.REVOKED)
            elif found.action is Action.FOLLOW and facts is not None:
                member.grants_changed(facts.accounts)
        for why, count in ended.items():
            self.log.info("{why} for user {user_id}: ending {count} {transport} connections",
                          why=why, user_id=user_id, count=count, transport=self.transport)
        if facts is not None and user_id in self._users:
            self._users[user_id].password_fp = facts.password_fp
