"""Short-lived bearer tokens for the demo page (``[server] demo-page``).

A browser's ``EventSource`` and ``WebSocket`` cannot send an ``Authorization``
header, so the page logs in once with the user's password and gets a bearer token
to pass as ``access_token``. The tokens are ordinary store tokens under a label of
their own, so every transport authenticates and revalidates them as usual. Each
user holds at most one (a new login revokes the previous one); each is revoked
after :data:`DEMO_TOKEN_TTL` seconds, when the daemon stops, and — for tokens a
killed daemon left behind — when it starts again with the page on.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from jmappushd.auth.authenticator import Principal
from jmappushd.auth.passwords import new_bearer_token, token_digest
from jmappushd.store.interface import IPrincipalStore

DEMO_TOKEN_TTL = 3600  # s
#: The store label that marks a token as the demo page's (and only those are revoked).
DEMO_LABEL = "jmappushd demo page (revoked automatically)"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int


class DemoTokens:
    """Issues, expires and revokes the demo page's tokens."""

    log = Logger()

    def __init__(self, store: IPrincipalStore, clock: IReactorTime,
                 ttl: float = DEMO_TOKEN_TTL) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._live: dict[str, tuple[str, IDelayedCall]] = {}  # token id by user name

    async def issue(self, principal: Principal) -> IssuedToken:
        """A new token for the user, replacing their previous demo token."""
        await self._revoke_user(principal.username)
        token = new_bearer_token()
        record = await self._store.create_token(principal.username, token_digest(token),
                                                DEMO_LABEL)
        timer = self._clock.callLater(self._ttl, self._expired, principal.username, record.id)
        previous = self._live.get(principal.username)
        self._live[principal.username] = (record.id, timer)
        if previous is not None:  # a concurrent login of the same user: the last one wins
            _cancel(previous[1])
            await self._store.revoke_token(previous[0])
        return IssuedToken(token, int(self._ttl))

    async def revoke_left_over(self) -> int:
        """Revoke every demo token in the store (a previous run's); returns how many."""
        revoked = 0
        for user in await self._store.list_users():
            for record in await self._store.list_tokens(user.name):
                if record.label == DEMO_LABEL and await self._store.revoke_token(record.id):
                    revoked += 1
        return revoked

    async def revoke_all(self) -> None:
        """Revoke the tokens this run issued and cancel their timers (at shutdown)."""
        for name in list(self._live):
            await self._revoke_user(name)

    @property
    def live_count(self) -> int:
        return len(self._live)

    async def _revoke_user(self, name: str) -> None:
        for record in await self._store.list_tokens(name):
            if record.label == DEMO_LABEL:
                await self._store.revoke_token(record.id)
        entry = self._live.pop(name, None)
        if entry is not None:
            _cancel(entry[1])

    def _expired(self, name: str, token_id: str) -> None:
        entry = self._live.get(name)
        if entry is not None and entry[0] == token_id:
            del self._live[name]
        d = self._store.revoke_token(token_id)
        d.addErrback(lambda f: self.log.failure("revoking an expired demo token failed", f))


def _cancel(timer: IDelayedCall) -> None:
    if timer.active():
        timer.cancel()
