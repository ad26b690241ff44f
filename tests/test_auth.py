"""twisted.cred authentication: checkers, realm, credential cache and invalidation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock

from jmappushd.auth.authenticator import Authenticator, BearerToken, CredentialCache, Principal
from jmappushd.auth.kdf import KDFLimiter
from jmappushd.auth.passwords import hash_password, new_bearer_token, token_digest, verify_password
from jmappushd.store.sqlite import SQLiteStore
from tests.store_backends import open_memory_store
from tests.support import TEST_LOG_N


class CountingKDF:
    """Runs verify_password synchronously and counts the calls (the KDF is the cost)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        self.calls += 1
        return defer.succeed(f(*args))


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    from twisted.internet import reactor

    s = SQLiteStore(str(tmp_path / "db.sqlite3"), reactor=reactor)
    await s.open()
    yield s
    await s.close()


def make_auth(store: SQLiteStore, ttl: float = 60) -> tuple[Authenticator, Clock, CountingKDF]:
    clock = Clock()
    kdf = CountingKDF()
    return Authenticator(store, clock, kdf, ttl), clock, kdf


def test_password_hash_round_trip() -> None:
    """Passwords are stored as salted scrypt hashes and verified in constant time."""
    encoded = hash_password("pässword", log_n=TEST_LOG_N)
    assert encoded.startswith("$scrypt$ln=4,r=8,p=1$")
    assert "pässword" not in encoded
    assert verify_password("pässword", encoded)
    assert not verify_password("password", encoded)
    assert hash_password("x", log_n=TEST_LOG_N) != hash_password("x", log_n=TEST_LOG_N)
    for broken in ("", "$scrypt$", "$md5$ln=4,r=8,p=1$a$b", "$scrypt$ln=99,r=8,p=1$AA$AA"):
        assert not verify_password("x", broken)


def test_bearer_tokens_are_random_and_digested() -> None:
    """Tokens carry 256 random bits; only their SHA-256 digest is stored."""
    a, b = new_bearer_token(), new_bearer_token()
    assert a != b and a.startswith("jmp_") and len(a) >= 40
    assert len(token_digest(a)) == 32 and token_digest(a) != token_digest(b)


@pytest_twisted.ensureDeferred
async def test_basic_login_is_cached_by_keyed_hash(store: SQLiteStore) -> None:
    """A successful Basic check is cached, so the KDF runs once per TTL, not per request."""
    user = await store.add_user("alice", hash_password("pw", TEST_LOG_N), "acc1")
    auth, clock, kdf = make_auth(store, ttl=30)
    for _ in range(5):
        principal = await auth.login(UsernamePassword(b"alice", b"pw"))
        assert principal.user_id == user.id
        assert principal.credential_id == "password:" + user.id
        assert principal.account_ids == {"acc1"}
    assert kdf.calls == 1
    clock.advance(31)
    await auth.login(UsernamePassword(b"alice", b"pw"))
    assert kdf.calls == 2


@pytest_twisted.ensureDeferred
async def test_wrong_password_never_uses_the_cache(store: SQLiteStore) -> None:
    """A cached success for one password does not let another password in."""
    await store.add_user("alice", hash_password("pw", TEST_LOG_N))
    auth, _, _ = make_auth(store)
    await auth.login(UsernamePassword(b"alice", b"pw"))
    with pytest.raises(UnauthorizedLogin):
        await auth.login(UsernamePassword(b"alice", b"pw2"))
    with pytest.raises(UnauthorizedLogin):
        await auth.login(UsernamePassword(b"bob", b"pw"))


@pytest_twisted.ensureDeferred
async def test_bearer_login_and_revocation(store: SQLiteStore) -> None:
    """A token logs in as its user with a token credential id; once revoked (the CLI
    bumps the auth generation) the poll drops the cache and the token fails."""
    await store.add_user("alice", hash_password("pw", TEST_LOG_N))
    token = new_bearer_token()
    record = await store.create_token("alice", token_digest(token))
    auth, _, _ = make_auth(store)
    await auth.check_generation()
    principal = await auth.login(BearerToken(token))
    assert principal.credential_id == "token:" + record.id
    await store.revoke_token(record.id)
    # Still cached until the generation poll notices.
    await auth.login(BearerToken(token))
    invalidated: list[bool] = []
    auth.on_invalidate(lambda: invalidated.append(True))
    await auth.check_generation()
    assert invalidated == [True]
    with pytest.raises(UnauthorizedLogin):
        await auth.login(BearerToken(token))


@pytest_twisted.ensureDeferred
async def test_password_change_drops_cached_credentials(store: SQLiteStore) -> None:
    """After a password change (generation bump) the old password stops working at once."""
    await store.add_user("alice", hash_password("old", TEST_LOG_N))
    auth, _, _ = make_auth(store)
    await auth.check_generation()
    await auth.login(UsernamePassword(b"alice", b"old"))
    await store.set_password("alice", hash_password("new", TEST_LOG_N))
    await auth.check_generation()
    with pytest.raises(UnauthorizedLogin):
        await auth.login(UsernamePassword(b"alice", b"old"))
    assert isinstance(await auth.login(UsernamePassword(b"alice", b"new")), Principal)


def test_generation_watcher_is_owned_and_clock_driven() -> None:
    """The watcher is one LoopingCall on the injected clock; a moved generation fires the
    invalidation listeners; after stop() no timer is left."""
    clock = Clock()
    memory = open_memory_store()  # answers at once, so the poll is fully clock-driven
    auth = Authenticator(memory, clock, CountingKDF(), 60, generation_poll=2.0)
    fired: list[int] = []
    auth.on_invalidate(lambda: fired.append(1))
    auth.start()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2)
    assert fired == []
    memory.add_user("alice", "h")  # bumps the generation
    clock.advance(2)
    assert fired == [1]
    auth.stop()
    assert clock.getDelayedCalls() == []


def test_cache_is_bounded_and_keyed() -> None:
    """Entries are HMAC keys (never the secret), expire by TTL and are LRU-bounded."""
    clock = Clock()
    cache = CredentialCache(clock, ttl=10, max_entries=3)
    keys = [cache.key("basic", f"user{i}", "pw") for i in range(5)]
    assert all(len(k) == 32 and b"pw" not in k for k in keys)
    for i, k in enumerate(keys):
        cache.put(k, f"v{i}")
    assert len(cache) == 3 and cache.get(keys[0]) is None and cache.get(keys[4]) == "v4"
    clock.advance(11)
    assert cache.get(keys[4]) is None
    other = CredentialCache(clock, ttl=10)
    assert other.key("basic", "user0", "pw") != keys[0]


def test_cred_components_provide_their_interfaces() -> None:
    """verifyObject: checkers, realm and credentials implement the twisted.cred interfaces."""
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.cred.portal import IRealm
    from zope.interface.verify import verifyObject

    from jmappushd.auth.authenticator import (
        BearerTokenChecker,
        IBearerToken,
        JMAPRealm,
        PasswordChecker,
    )

    fake: Any = object()
    cache = CredentialCache(Clock(), 1)
    kdf = KDFLimiter(CountingKDF(), Clock(), 1, 1)
    assert verifyObject(ICredentialsChecker, PasswordChecker(fake, cache, kdf))
    assert verifyObject(ICredentialsChecker, BearerTokenChecker(fake, cache))
    assert verifyObject(IRealm, JMAPRealm(fake, Clock(), 1))
    assert verifyObject(IBearerToken, BearerToken("x"))
