"""Gateway mode's principals: the client's credentials checked by the upstream itself.

Every credential (Basic, Bearer, or an ``access_token`` turned into Bearer) is re-encoded as
the ``Authorization`` header it came as and used to GET the upstream's session: a 200 is a
login, whose Session lists exactly the accounts this user may read (isolation comes from
the upstream); a 401/403 is a failed login that carries the upstream's ``WWW-Authenticate``
to the client; an upstream that cannot answer refuses the login with 503 (the credentials
may be right). Checks are cached under a keyed hash for ``[auth] cache-ttl`` and identical
concurrent checks share one upstream request, as for local passwords.

The daemon keeps no users in gateway mode, but push subscriptions belong to a user row of
its store; each upstream user therefore has a *shadow* user there (name ``upstream:<name>``,
no usable password, its grants following the accounts the upstream session lists), so Web
Push, revalidation and the subscription limits work as they do standalone.

The Principal of a gateway login carries the client's ``Authorization`` (forwarded with each
API call the client makes through the daemon) for as long as the client's connection or
request lives, and the upstream session it was checked with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jmappushd.auth.authenticator import (
    ClearableRealm,
    IBearerToken,
    IPrincipal,
    Principal,
    UpstreamIdentity,
)
from jmappushd.auth.refusals import LoginRefused
from jmappushd.gateway.session import UpstreamSession, parse_session
from jmappushd.gateway.upstream import UpstreamClient, UpstreamRejected, UpstreamUnavailable
from jmappushd.store.interface import IStore
from jmappushd.store.records import Account, AccountInUse

__all__ = ["SHADOW_PREFIX", "UNUSABLE_PASSWORD", "UpstreamChecker", "UpstreamLoginRejected",
           "UpstreamRealm", "UpstreamSessions", "UpstreamUnavailableLogin",
           "authorization_of"]

SHADOW_PREFIX = "upstream:"
UNUSABLE_PASSWORD = "!upstream"  # noqa: S105 - no scrypt hash has this form: never matches
MAIL = "urn:ietf:params:jmap:mail"
MAX_ENTRIES = 10_000


class UpstreamLoginRejected(cred_error.UnauthorizedLogin):
    """The upstream refused the credentials; ``challenges`` are its WWW-Authenticate values."""

    def __init__(self, status: int, challenges: tuple[bytes, ...]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.challenges = challenges


class UpstreamUnavailableLogin(LoginRefused):
    """The upstream could not check the credentials now: 503, try again."""

    status = 503
    reason = "upstream"


def authorization_of(credentials: object) -> bytes:
    """The ``Authorization`` header value the credentials were presented as."""
    if IUsernamePassword.providedBy(credentials):
        user = _as_bytes(credentials.username)
        password = _as_bytes(credentials.password)
        return b"Basic " + base64.b64encode(user + b":" + password)
    if IBearerToken.providedBy(credentials):
        return b"Bearer " + str(credentials.token).encode("utf-8")
    raise cred_error.UnhandledCredentials("not Basic or Bearer credentials")


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    authorization: bytes
    session: UpstreamSession


class UpstreamSessions:
    """Checked credentials → the upstream session they gave, cached and single-flight."""

    log = Logger()

    def __init__(self, client: UpstreamClient, session_url: str, clock: IReactorTime,
                 ttl: float) -> None:
        self._client = client
        self._session_url = session_url
        self._clock = clock
        self._ttl = ttl
        self._secret = secrets.token_bytes(32)
        # In fetch order, which is expiry order (one ttl for all): the oldest go first.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._waiting: dict[str, list[Deferred[str]]] = {}
        self._evicted: list[Callable[[str], None]] = []
        self.fetches = 0

    def on_evict(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(key)`` when an entry expires or is pushed out (the realm then
        drops its Principal, so no Authorization outlives its cache lifetime)."""
        self._evicted.append(callback)

    def _evict(self, key: str) -> None:
        self._entries.pop(key, None)
        for callback in self._evicted:
            callback(key)

    def _evict_expired(self) -> None:
        now = self._clock.seconds()
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            if oldest.expires > now:
                return
            self._evict(key)

    def key(self, authorization: bytes) -> str:
        return hmac.new(self._secret, authorization, hashlib.sha256).hexdigest()

    def check(self, authorization: bytes) -> Deferred[str]:
        """The avatar id for ``authorization`` (a key of this cache), or a login failure."""
        self._evict_expired()
        key = self.key(authorization)
        if key in self._entries:
            return defer.succeed(key)  # not expired: _evict_expired would have taken it
        return self._fetch_shared(key, authorization)

    def refresh(self, authorization: bytes) -> Deferred[str]:
        """Ask the upstream again whatever the cache holds (a live connection's credential
        re-checked); the answer replaces the cached one. A check in flight is shared."""
        return self._fetch_shared(self.key(authorization), authorization)

    def forget(self, key: str) -> None:
        self._evict(key)

    def _fetch_shared(self, key: str, authorization: bytes) -> Deferred[str]:
        mine: Deferred[str] = Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(mine)  # identical check in flight: share its answer
            return mine
        self._waiting[key] = [mine]
        Deferred.fromCoroutine(self._fetch(key, authorization)).addBoth(self._settled, key)
        return mine

    def _settled(self, result: str | Failure, key: str) -> None:
        for waiter in self._waiting.pop(key, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _fetch(self, key: str, authorization: bytes) -> str:
        self.fetches += 1
        try:
            answer = await self._client.get(self._session_url, authorization)
        except UpstreamRejected as e:
            self.forget(key)  # an expired entry of a credential now refused goes too
            raise UpstreamLoginRejected(e.status, e.challenges) from None
        except UpstreamUnavailable as e:
            raise UpstreamUnavailableLogin(e.reason, 5) from None
        if answer.status != 200:
            raise UpstreamUnavailableLogin(
                f"{self._client.name} answered the session request with {answer.status}", 5)
        try:
            session = parse_session(answer.body, self._session_url, self._client.name)
        except UpstreamUnavailable as e:
            raise UpstreamUnavailableLogin(e.reason, 5) from None
        self._entries.pop(key, None)  # re-inserted last: its new expiry is the latest
        self._entries[key] = _Entry(self._clock.seconds() + max(self._ttl, 0.0), authorization,
                                    session)
        while len(self._entries) > MAX_ENTRIES:
            self._evict(next(iter(self._entries)))
        self._evict_expired()
        return key

    def entry(self, key: str) -> tuple[bytes, UpstreamSession] | None:
        found = self._entries.get(key)
        return None if found is None else (found.authorization, found.session)

    def clear(self) -> None:
        self._entries.clear()


@implementer(ICredentialsChecker)
class UpstreamChecker:
    """Basic and Bearer credentials, checked by fetching the upstream session with them."""

    credentialInterfaces = (IUsernamePassword, IBearerToken)

    def __init__(self, sessions: UpstreamSessions) -> None:
        self._sessions = sessions

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        return self._sessions.check(authorization_of(credentials))


@implementer(ClearableRealm)
class UpstreamRealm:
    """The avatar id of a checked credential → a Principal from its upstream session.

    The Principal is kept with the session it was built from and reused until the session
    is fetched again (as the standalone realm keeps its own): every request logs in, and
    what hangs off a Principal, such as the memoized session ``state`` each response
    carries, would otherwise be rebuilt from the whole upstream session per request.
    """

    log = Logger()

    def __init__(self, sessions: UpstreamSessions, store: IStore) -> None:
        self._sessions = sessions
        self._store = store
        self._synced: dict[str, tuple[str, frozenset[str]]] = {}
        self._principals: dict[str, tuple[UpstreamSession, Principal]] = {}
        sessions.on_evict(self.forget)

    def clear(self) -> None:
        self._synced.clear()
        self._principals.clear()

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> Any:
        if IPrincipal not in interfaces:
            raise NotImplementedError("only IPrincipal avatars exist")
        return Deferred.fromCoroutine(self._principal(str(avatarId)))

    def forget(self, key: str) -> None:
        """The credential was refused or its cache entry ended: drop its Principal (and
        the Authorization it holds)."""
        self._principals.pop(key, None)

    def principal(self, key: str) -> Deferred[Principal]:
        """The Principal of a checked credential, from its cached session (the shadow
        user's grants brought in step with that session's accounts on the way)."""
        async def build() -> Principal:
            _, principal, _ = await self._principal(key)
            return principal
        return Deferred.fromCoroutine(build())

    async def _principal(self, key: str) -> tuple[Any, Principal, Any]:
        found = self._sessions.entry(key)
        if found is None:
            raise cred_error.UnauthorizedLogin("checked credentials expired")
        authorization, session = found
        kept = self._principals.get(key)
        if kept is not None and kept[0] is session:
            return IPrincipal, kept[1], _no_logout
        accounts = tuple(
            Account(account_id, str(value.get("name", account_id)),
                    bool(value.get("isPersonal", False)))
            for account_id, value in session.accounts.items())
        primary = session.primary_accounts.get(MAIL) or (accounts[0].id if accounts else "")
        user_id = await self._shadow_user(session.username, primary,
                                          frozenset(a.id for a in accounts))
        principal = Principal(
            user_id=user_id,
            username=session.username,
            credential_id=SHADOW_PREFIX + session.username,
            accounts=accounts,
            primary_account_id=primary,
            upstream=UpstreamIdentity(authorization, session),
        )
        if len(self._principals) >= MAX_ENTRIES:
            self._principals.clear()
        self._principals[key] = (session, principal)
        return IPrincipal, principal, _no_logout

    async def _shadow_user(self, username: str, primary: str, account_ids: frozenset[str]
                           ) -> str:
        """The store row push subscriptions of this upstream user belong to, kept in step
        with the accounts the upstream lists (grants), created on first login."""
        name = SHADOW_PREFIX + username
        synced = self._synced.get(name)
        if synced is not None and synced[1] == account_ids:
            return synced[0]
        user = await self._store.get_user(name)
        if user is None:
            try:
                user = await self._store.add_user(name, UNUSABLE_PASSWORD, primary or None)
            except AccountInUse:
                # A standalone user owns that account id (a daemon switched to gateway
                # mode with old users): the shadow gets a generated primary instead.
                self.log.warn("Account {account} of upstream user {user} is a local user's; "
                              "its push subscriptions use a generated account",
                              account=primary, user=username)
                user = await self._store.add_user(name, UNUSABLE_PASSWORD, None)
        have = {a.id for a in await self._store.accounts_for_user(user.id)}
        for account_id in account_ids - have:
            await self._store.grant(name, account_id)
        for account_id in have - account_ids - {user.primary_account_id}:
            await self._store.revoke_grant(name, account_id)
        self._synced[name] = (user.id, account_ids)
        if len(self._synced) > MAX_ENTRIES:
            self._synced.clear()
        return user.id


def _no_logout() -> None:
    return None
