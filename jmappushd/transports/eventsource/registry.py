"""Every open EventSource stream, by user: limits, shutdown and revocation.

When the store's auth generation moves (a user, password, token or grant
changed, possibly through jmappushctl), each user with open streams is looked
up again: streams of a removed user, of a revoked token, or authenticated with
a password that has since changed are ended; the others follow the user's
current grants. No credentials are kept: a password stream is compared by a
short fingerprint of the stored (salted) hash, taken once per user when its
first password stream opens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from twisted.internet import defer
from twisted.logger import Logger

from jmappushd.auth.authenticator import PASSWORD_CREDENTIAL, TOKEN_CREDENTIAL, Principal
from jmappushd.store.interface import IStore
from jmappushd.transports.eventsource.stream import EventStream


def password_fingerprint(password_hash: str) -> bytes:
    """Enough to notice a changed hash; useless for anything else."""
    return hashlib.sha256(password_hash.encode("utf-8")).digest()[:16]


class _UserStreams:
    __slots__ = ("password_fp", "streams")

    def __init__(self) -> None:
        self.streams: dict[EventStream, None] = {}
        self.password_fp: bytes | None = None


class StreamRegistry:
    """Owns the index of open streams; streams report their own end via ``discard``."""

    log = Logger()

    def __init__(self, store: IStore) -> None:
        self._store = store
        self._users: dict[str, _UserStreams] = {}
        self._count = 0
        self.closing = False
        self._revalidating = False
        self._again = False

    @property
    def count(self) -> int:
        """Open streams (the listener gauge)."""
        return self._count

    def count_for(self, user_id: str) -> int:
        entry = self._users.get(user_id)
        return 0 if entry is None else len(entry.streams)

    def streams(self) -> list[EventStream]:
        return [s for entry in self._users.values() for s in entry.streams]

    async def password_fingerprint_for(self, principal: Principal) -> bytes | None:
        """The fingerprint to remember for a password stream, when not yet known."""
        if not principal.credential_id.startswith(PASSWORD_CREDENTIAL):
            return None
        entry = self._users.get(principal.user_id)
        if entry is not None and entry.password_fp is not None:
            return None
        user = await self._store.get_user_by_id(principal.user_id)
        return None if user is None else password_fingerprint(user.password_hash)

    def add(self, stream: EventStream, password_fp: bytes | None = None) -> None:
        entry = self._users.get(stream.user_id)
        if entry is None:
            entry = self._users[stream.user_id] = _UserStreams()
        if entry.password_fp is None:
            entry.password_fp = password_fp
        if stream not in entry.streams:
            entry.streams[stream] = None
            self._count += 1

    def discard(self, stream: EventStream) -> None:
        """Called by a stream when it closes (any reason); forgets empty users."""
        entry = self._users.get(stream.user_id)
        if entry is None or stream not in entry.streams:
            return
        del entry.streams[stream]
        self._count -= 1
        if not entry.streams:
            del self._users[stream.user_id]

    def close_all(self) -> None:
        """Shutdown: refuse new streams and finish every open one."""
        self.closing = True
        streams = self.streams()
        if streams:
            self.log.info("ending {count} EventSource streams for shutdown", count=len(streams))
        self._end(streams)

    @staticmethod
    def _end(streams: Iterable[EventStream]) -> None:
        for stream in list(streams):
            stream.end()

    def invalidate(self) -> None:
        """``Authenticator.on_invalidate`` callback: re-check in the background."""
        d = defer.ensureDeferred(self.revalidate())
        d.addErrback(lambda f: self.log.failure("EventSource revalidation failed", f))

    async def revalidate(self) -> None:
        """Re-check every user with open streams; runs again if invalidated meanwhile."""
        if self._revalidating:
            self._again = True
            return
        self._revalidating = True
        try:
            while True:
                self._again = False
                for user_id in list(self._users):
                    await self._revalidate_user(user_id)
                if not self._again or self.closing:
                    break
        finally:
            self._revalidating = False

    async def _revalidate_user(self, user_id: str) -> None:
        store = self._store
        user = await store.get_user_by_id(user_id)
        if user is None:
            entry = self._users.get(user_id)
            if entry is not None:
                self.log.info("user {user_id} removed: ending its EventSource streams",
                              user_id=user_id)
                self._end(entry.streams)
            return
        accounts = frozenset(a.id for a in await store.accounts_for_user(user_id))
        token_ids = {t.id for t in await store.list_tokens(user.name)}
        entry = self._users.get(user_id)
        if entry is None:
            return
        fp = password_fingerprint(user.password_hash)
        password_changed = entry.password_fp is not None and entry.password_fp != fp
        revoked: list[EventStream] = []
        for stream in list(entry.streams):
            credential = stream.credential_id
            if credential.startswith(TOKEN_CREDENTIAL):
                gone = credential[len(TOKEN_CREDENTIAL):] not in token_ids
            else:
                # A stream opened with the new password while the change was being
                # noticed may be ended too; its client just reconnects.
                gone = password_changed
            if gone:
                revoked.append(stream)
            else:
                stream.set_accounts(accounts)
        if revoked:
            self.log.info("credentials of user {user_id} revoked: ending {count} streams",
                          user_id=user_id, count=len(revoked))
            self._end(revoked)
        entry.password_fp = fp
