"""Authentication through twisted.cred: Basic passwords and bearer tokens.

A :class:`Principal` is what every transport gets after login: the user, the
credential that authenticated (push subscriptions belong to it) and the accounts
the user may read. Successful checks are cached in memory for a short time,
keyed by a keyed hash of the credentials, so the memory-hard KDF does not run on
every HTTP request; the cache is emptied whenever the store's auth generation
moves (a user, password, grant or token changed, possibly through the CLI).

Basic logins are abuse-resistant: an unknown user costs the same KDF work as a wrong
password (a decoy hash), the KDF runs in threads within the bounds of
:mod:`~jmappushd.auth.kdf`, and :mod:`~jmappushd.auth.failures` throttles failed
logins per client address and slows guesses at one username from many addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from jmappushd.auth.failures import FailureThrottle
from jmappushd.auth.kdf import KDFLimiter
from jmappushd.auth.kdf import ThreadRunner as ThreadRunner  # re-exported for the wiring
from jmappushd.auth.passwords import DecoyHash, token_digest
from jmappushd.config import AuthConfig
from jmappushd.store.interface import IStore
from jmappushd.store.records import Account

if TYPE_CHECKING:
    from jmappushd.gateway.session import UpstreamSession

T = TypeVar("T")

PASSWORD_CREDENTIAL = "password:"  # noqa: S105 - a prefix, not a secret
TOKEN_CREDENTIAL = "token:"  # noqa: S105 - a prefix, not a secret


class IPrincipal(Interface):
    """Marker interface for the avatar a JMAP transport asks the portal for."""

    user_id = Attribute("The opaque user id.")


@dataclass(frozen=True, eq=False)
class UpstreamIdentity:
    """Gateway mode: how this principal reaches the upstream, and what it said at login."""

    authorization: bytes  # the client's own Authorization, forwarded with its API calls
    session: UpstreamSession


@implementer(IPrincipal)
@dataclass(frozen=True, eq=False)
class Principal:
    """An authenticated user as seen by one set of credentials."""

    user_id: str
    username: str
    credential_id: str
    accounts: tuple[Account, ...]
    primary_account_id: str
    upstream: UpstreamIdentity | None = None  # set in gateway mode only
    account_ids: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "account_ids", frozenset(a.id for a in self.accounts))


class IBearerToken(ICredentials):
    """An RFC 6750 bearer token."""

    token = Attribute("The token string as presented by the client.")


@implementer(IBearerToken)
@dataclass(frozen=True)
class BearerToken:
    """Bearer credentials from an ``Authorization`` header or ``access_token`` parameter."""

    token: str


class CredentialCache:
    """A small TTL/LRU map from a keyed hash of credentials to an avatar id.

    The key is an HMAC under a per-process secret, so a memory dump never shows a
    reusable password hash and two processes never share entries.
    """

    def __init__(self, clock: IReactorTime, ttl: float, max_entries: int = 10_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[float, str]] = OrderedDict()

    def key(self, *parts: str) -> bytes:
        message = b"\x00".join(p.encode("utf-8", "surrogatepass") for p in parts)
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def get(self, key: bytes) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock.seconds() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: str) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (self._clock.seconds() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks Basic credentials against scrypt hashes through the bounded KDF limiter.

    An unknown user (or an unusable stored hash) is checked against a decoy hash with
    the cost parameters of the real ones, so its answer takes just as long (no oracle
    of which usernames exist).
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, store: IStore, cache: CredentialCache, kdf: KDFLimiter) -> None:
        self._store = store
        self._cache = cache
        self._kdf = kdf
        self._decoy = DecoyHash()

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        return defer.ensureDeferred(self._check(credentials))

    async def _check(self, credentials: IUsernamePassword) -> str:
        username = _as_text(credentials.username)
        password = _as_text(credentials.password)
        key = self._cache.key("basic", username, password)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        user = await self._store.get_user(username)
        encoded = self._decoy.stand_in(None if user is None else user.password_hash)
        flight = self._cache.key("kdf", username, password, encoded)
        ok = await self._kdf.verify(flight, password, encoded)
        if user is None or not ok:
            raise cred_error.UnauthorizedLogin("bad credentials")
        avatar_id = PASSWORD_CREDENTIAL + user.id
        self._cache.put(key, avatar_id)
        return avatar_id


@implementer(ICredentialsChecker)
class BearerTokenChecker:
    """Looks bearer tokens up by their SHA-256 digest."""

    credentialInterfaces = (IBearerToken,)

    def __init__(self, store: IStore, cache: CredentialCache) -> None:
        self._store = store
        self._cache = cache

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        return defer.ensureDeferred(self._check(credentials))

    async def _check(self, credentials: IBearerToken) -> str:
        token = str(credentials.token)
        key = self._cache.key("bearer", token)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        found = await self._store.find_token(token_digest(token))
        if found is None:
            raise cred_error.UnauthorizedLogin("unknown token")
        record, user = found
        avatar_id = f"{TOKEN_CREDENTIAL}{record.id}:{user.id}"
        self._cache.put(key, avatar_id)
        return avatar_id


class ClearableRealm(IRealm):
    """A realm whose cached principals can be dropped (credentials may have changed)."""

    def clear() -> None:
        """Forget every cached principal."""


@implementer(ClearableRealm)
class JMAPRealm:
    """Turns an avatar id into a :class:`Principal`, caching by avatar id."""

    def __init__(self, store: IStore, clock: IReactorTime, ttl: float) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._clock = clock
        self._ttl = ttl

    def clear(self) -> None:
        self._cache.clear()

    def cached(self, avatar_id: str) -> Principal | None:
        """The principal of ``avatar_id`` if it is cached and fresh (no store read)."""
        cached = self._cache.get(avatar_id)
        if cached is not None and cached[0] > self._clock.seconds():
            return cached[1]
        return None

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> Any:
        if IPrincipal not in interfaces:
            raise NotImplementedError("only IPrincipal avatars exist")
        return defer.ensureDeferred(self._principal(str(avatarId)))

    async def _principal(self, avatar_id: str) -> tuple[Any, Principal, Callable[[], None]]:
        now = self._clock.seconds()
        cached = self._cache.get(avatar_id)
        if cached is not None and cached[0] > now:
            return IPrincipal, cached[1], _no_logout
        if avatar_id.startswith(TOKEN_CREDENTIAL):
            token_id, user_id = avatar_id[len(TOKEN_CREDENTIAL) :].rsplit(":", 1)
            credential_id = TOKEN_CREDENTIAL + token_id
        else:
            user_id = avatar_id[len(PASSWORD_CREDENTIAL) :]
            credential_id = avatar_id
        user = await self._store.get_user_by_id(user_id)
        if user is None:
            raise cred_error.UnauthorizedLogin("user vanished")
        accounts = tuple(await self._store.accounts_for_user(user.id))
        principal = Principal(
            user_id=user.id,
            username=user.name,
            credential_id=credential_id,
            accounts=accounts,
            primary_account_id=user.primary_account_id,
        )
        if self._ttl > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[avatar_id] = (now + self._ttl, principal)
        return IPrincipal, principal, _no_logout


def _no_logout() -> None:
    return None


def _as_text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


@dataclass(frozen=True)
class PrincipalSource:
    """Where principals come from instead of the store's users (gateway: the upstream)."""

    realm: ClearableRealm
    checkers: tuple[ICredentialsChecker, ...]


class Authenticator:
    """The one entry point transports use: credentials in, Principal or failure out.

    It owns the portal, both caches, the KDF limiter, the failure throttle and the
    watcher that empties the caches when the store's auth generation changes.
    """

    log = Logger()

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        run_in_thread: ThreadRunner,
        cache_ttl: float,
        generation_poll: float = 2.0,
        limits: AuthConfig | None = None,
        principals: PrincipalSource | None = None,
    ) -> None:
        """``principals`` replaces the store's users (gateway mode: the upstream's)."""
        limits = limits if limits is not None else AuthConfig()
        self._store = store
        self._clock = clock
        self._cache = CredentialCache(clock, cache_ttl)
        self._realm: ClearableRealm = JMAPRealm(store, clock, cache_ttl)
        slots = limits.max_concurrent_kdf or os.cpu_count() or 1
        self.kdf = KDFLimiter(run_in_thread, clock, slots, limits.max_queued_kdf)
        self.failures = FailureThrottle(clock, limits.max_failures, limits.failure_window)
        checkers: list[ICredentialsChecker] = [PasswordChecker(store, self._cache, self.kdf),
                                               BearerTokenChecker(store, self._cache)]
        self._local: JMAPRealm | None = self._realm
        if principals is not None:
            self._realm, checkers = principals.realm, list(principals.checkers)
            self._local = None
        self.portal = Portal(self._realm)
        for checker in checkers:
            self.portal.registerChecker(checker)
        self._generation: int | None = None
        self._watcher = LoopingCall(self.check_generation)
        self._watcher.clock = clock
        self._poll = generation_poll
        self._listeners: list[Callable[[], None]] = []

    async def login(self, credentials: ICredentials, client: str | None = None) -> Principal:
        """Authenticate a client at address ``client`` (None: no address to count).

        Raises ``twisted.cred.error.UnauthorizedLogin`` for bad credentials (after the
        username's penalty delay, if any), and a
        :class:`~jmappushd.auth.refusals.LoginRefused` when the password was not checked:
        the address is throttled (429) or the KDF queue is full (503).
        """
        if not IUsernamePassword.providedBy(credentials):
            if IBearerToken.providedBy(credentials):
                known = self._known(self._cache.key("bearer", str(credentials.token)))
                if known is not None:
                    return known
            return await self._login(credentials)
        username = _as_text(credentials.username)
        # The checker's cache key doubles as the throttle's name for this attempt.
        attempt = self._cache.key("basic", username, _as_text(credentials.password))
        self.failures.admit(client, attempt)
        known = self._known(attempt)
        if known is not None:
            self.failures.succeeded(client, attempt)
            return known
        try:
            principal = await self._login(credentials)
        except cred_error.UnauthorizedLogin:
            delay = self.failures.failed(client, attempt, username)
            if delay > 0:
                await deferLater(self._clock, delay)
            raise
        except BaseException:
            self.failures.abandon(client, attempt)
            raise
        self.failures.succeeded(client, attempt)
        return principal

    def _known(self, key: bytes) -> Principal | None:
        """A login both caches remember, answered without the portal's Deferreds (the
        same checks, already made within ``cache-ttl``). Only with the store's own
        checkers and realm: gateway mode's come from the upstream and keep the portal."""
        if self._local is None:
            return None
        avatar_id = self._cache.get(key)
        return None if avatar_id is None else self._local.cached(avatar_id)

    async def _login(self, credentials: ICredentials) -> Principal:
        _, avatar, _ = await self.portal.login(credentials, None, IPrincipal)
        assert isinstance(avatar, Principal)
        return avatar

    def on_invalidate(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever credentials may have been revoked."""
        self._listeners.append(callback)

    def invalidate(self) -> None:
        self._cache.clear()
        self._realm.clear()
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                self.log.failure("credential invalidation listener failed")

    async def check_generation(self) -> None:
        """Poll the store's auth generation; never raises (it runs in a LoopingCall)."""
        try:
            generation = await self._store.auth_generation()
        except Exception:
            self.log.failure("could not read the auth generation")
            return
        if self._generation is not None and generation != self._generation:
            self.log.info("credentials changed (generation {generation}); caches dropped",
                          generation=generation)
            self.invalidate()
        self._generation = generation

    def start(self) -> None:
        if not self._watcher.running:
            self._watcher.start(self._poll, now=True)

    def stop(self) -> None:
        if self._watcher.running:
            self._watcher.stop()
