"""Basic logins through the Authenticator on the memory store and a task.Clock: unknown
users cost the same KDF (issue 11, defect 3), the KDF limiter and single-flight (4a/4b)
and the failure throttle (4c) as the transports see them. Threads are faked."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock

from jmappushd.auth.authenticator import Authenticator, BearerToken, Principal
from jmappushd.auth.failures import PENALTY_MAX
from jmappushd.auth.passwords import (
    DEFAULT_PARAMS,
    hash_parameters,
    hash_password,
    token_digest,
)
from jmappushd.auth.refusals import KDFBusy, LoginThrottled
from jmappushd.config import AuthConfig
from jmappushd.store import MemoryStore
from tests.auth_fakes import HeldThreads
from tests.store_backends import open_memory_store
from tests.support import TEST_LOG_N

TOKEN = "jmp_login-test"


class Setup:
    def __init__(self, ttl: float = 60, **limits: Any) -> None:
        self.clock = Clock()
        self.threads = HeldThreads()
        self.store: MemoryStore = open_memory_store()
        self.store.add_user("alice", hash_password("right", TEST_LOG_N), "A")
        self.store.create_token("alice", token_digest(TOKEN))
        config = AuthConfig(**{"max_concurrent_kdf": 2, "max_failures": 3, **limits})
        self.auth = Authenticator(self.store, self.clock, self.threads, ttl, limits=config)

    def login(self, user: str, password: str, client: str | None = "192.0.2.1"
              ) -> defer.Deferred[Principal]:
        creds = UsernamePassword(user.encode(), password.encode())
        return defer.ensureDeferred(self.auth.login(creds, client))

    def outcome(self, d: defer.Deferred[Any]) -> Any:
        """Run the pending KDFs and return the login's result or Failure."""
        self.threads.run_all()
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "the login has not finished"
        return out[0]


def test_an_unknown_user_costs_a_kdf_with_the_real_parameters() -> None:
    """Defect 3: an unknown username is checked against a decoy hash, in a thread, with the
    cost parameters of the stored hashes (the default ones until one was seen), so the
    answer takes as long as a wrong password for an existing user."""
    s = Setup()
    s.login("alice", "wrong")
    s.login("nobody", "wrong")
    assert s.threads.calls == 2
    wrong, unknown = (job.args[1] for job in s.threads.jobs)
    assert hash_parameters(unknown) == hash_parameters(wrong) == (TEST_LOG_N, 8, 1)
    assert unknown != wrong
    s.threads.run_all()


def test_the_first_decoy_uses_the_default_parameters() -> None:
    """Before any real hash was looked up, the decoy has the production parameters."""
    s = Setup()
    s.login("nobody", "x")
    (job,) = s.threads.jobs
    assert hash_parameters(job.args[1]) == DEFAULT_PARAMS
    s.threads.run_all()


def test_unknown_user_and_wrong_password_fail_alike() -> None:
    """Both are the same UnauthorizedLogin (no message telling them apart)."""
    s = Setup()
    a, b = s.outcome(s.login("alice", "wrong")), s.outcome(s.login("nobody", "wrong"))
    assert a.check(UnauthorizedLogin) and b.check(UnauthorizedLogin)
    assert str(a.value) == str(b.value)


def test_concurrent_identical_logins_cost_one_kdf() -> None:
    """Defect 4b: 200 concurrent identical correct logins run one KDF and all succeed."""
    s = Setup()
    ds = [s.login("alice", "right") for _ in range(200)]
    assert s.threads.calls == 1
    s.threads.run_all()
    assert all(isinstance(d.result, Principal) for d in ds)


def test_kdfs_beyond_the_queue_are_refused_and_not_counted_as_failures() -> None:
    """Defect 4a: with 2 slots and 2 queued, the 5th distinct check gets KDFBusy (503)
    without a thread; being refused as busy never locks the address."""
    s = Setup(max_queued_kdf=2, max_failures=100)
    pending = [s.login("alice", f"guess{i}", client=f"198.51.100.{i}") for i in range(4)]
    busy = [s.login("alice", f"more{i}") for i in range(20)]
    assert s.threads.calls == 2 and s.auth.kdf.queued == 2
    for d in busy:
        f = s.outcome(d) if d.called else None
        assert f is not None and f.check(KDFBusy)
    s.threads.run_all()
    for d in pending:
        d.addErrback(lambda f: f.trap(UnauthorizedLogin))
    assert isinstance(s.outcome(s.login("alice", "right")), Principal)


def test_a_throttled_address_gets_no_kdf_even_for_a_cached_password() -> None:
    """Defect 4c: after max-failures failures the address is refused before any check —
    a cached right password too (or the 429 would tell which guess is right); another
    address logs in; after the window the first may try again."""
    s = Setup(failure_window=300)
    assert isinstance(s.outcome(s.login("alice", "right")), Principal)  # now cached
    for i in range(3):
        assert s.outcome(s.login("alice", f"wrong{i}")).check(UnauthorizedLogin)
    calls = s.threads.calls
    refused = s.outcome(s.login("alice", "right"))
    assert refused.check(LoginThrottled) and refused.value.retry_after == 300
    assert s.threads.calls == calls
    assert isinstance(s.outcome(s.login("alice", "right", client="192.0.2.2")), Principal)
    s.clock.advance(300)
    assert isinstance(s.outcome(s.login("alice", "right")), Principal)


def test_bearer_tokens_are_not_throttled_by_failed_passwords() -> None:
    """A locked address may still use a bearer token (tokens are 256-bit random: there
    is nothing to guess, and their check runs no KDF)."""
    s = Setup()
    for i in range(3):
        s.outcome(s.login("alice", f"wrong{i}"))
    principal = defer.ensureDeferred(s.auth.login(BearerToken(TOKEN), "192.0.2.1"))
    assert isinstance(principal.result, Principal)


def test_many_addresses_slow_the_usernames_failures_not_its_success() -> None:
    """Defect 4c: past max-failures failures for alice from fresh addresses, each 401 is
    answered only after a delay on the clock; her right password from yet another
    address still succeeds at once."""
    s = Setup()
    for i in range(3):
        assert s.outcome(s.login("alice", "wrong", client=f"198.51.100.{i}")).check(
            UnauthorizedLogin)
    slow = s.login("alice", "wrong", client="198.51.100.50")
    s.threads.run_all()
    assert not slow.called
    ok = s.outcome(s.login("alice", "right", client="203.0.113.9"))
    assert isinstance(ok, Principal)
    s.clock.advance(1)
    assert s.outcome(slow).check(UnauthorizedLogin)


@pytest.mark.parametrize("client", [None, "-"])
def test_no_address_means_no_address_lock(client: str | None) -> None:
    """Requests without a client address (Unix sockets) share no lock with each other."""
    s = Setup()
    for i in range(10):
        d = s.login("alice", f"wrong{i}", client=client)
        s.threads.run_all()
        s.clock.advance(PENALTY_MAX)  # past 3 failures alice's failures are delayed
        assert s.outcome(d).check(UnauthorizedLogin)
    assert isinstance(s.outcome(s.login("alice", "right", client=client)), Principal)


class CountingStore(MemoryStore):
    """The memory store, counting the lookups a login makes."""

    reads = 0

    def get_user(self, name: str) -> defer.Deferred[Any]:
        self.reads += 1
        return super().get_user(name)

    def get_user_by_id(self, user_id: str) -> defer.Deferred[Any]:
        self.reads += 1
        return super().get_user_by_id(user_id)

    def find_token(self, digest: bytes) -> defer.Deferred[Any]:
        self.reads += 1
        return super().find_token(digest)


def same(a: Any, b: Any) -> bool:
    return (a.user_id, a.credential_id, a.account_ids) == (b.user_id, b.credential_id,
                                                             b.account_ids)


def test_a_remembered_login_is_answered_from_the_caches_alike() -> None:
    """Issue 16 (the API path): a login both caches remember is answered without the
    portal, with the same principal, no store read and no KDF; a wrong password for a
    cached user still runs the full check; invalidation sends the next login back to
    the store; a bearer token takes the same short way once it is cached."""
    s = Setup()
    store = CountingStore()
    store.open()
    store.add_user("alice", hash_password("right", TEST_LOG_N), "A")
    store.create_token("alice", token_digest(TOKEN))
    s.auth = Authenticator(store, s.clock, s.threads, 60,
                           limits=AuthConfig(max_concurrent_kdf=2, max_failures=3))
    portal_logins: list[object] = []
    through_portal = s.auth.portal.login

    def counted(*args: Any) -> Any:
        portal_logins.append(args)
        return through_portal(*args)

    s.auth.portal.login = counted  # type: ignore[method-assign,assignment]
    first = s.outcome(s.login("alice", "right"))
    reads, kdfs = store.reads, s.threads.calls
    again = defer.ensureDeferred(s.auth.login(UsernamePassword(b"alice", b"right"), "192.0.2.1"))
    assert again.called and again.result is first  # the realm's cached principal
    assert len(portal_logins) == 1  # the second took the short way
    assert (store.reads, s.threads.calls) == (reads, kdfs)
    assert s.outcome(s.login("alice", "wrong")).check(UnauthorizedLogin)
    assert s.threads.calls == kdfs + 1
    s.auth.invalidate()
    reads = store.reads
    fresh = s.outcome(s.login("alice", "right"))
    assert fresh is not first and same(fresh, first)
    assert store.reads > reads
    token = s.outcome(defer.ensureDeferred(s.auth.login(BearerToken(TOKEN), None)))
    reads = store.reads
    cached = defer.ensureDeferred(s.auth.login(BearerToken(TOKEN), None))
    assert cached.called and cached.result is token and store.reads == reads
    s.clock.advance(61)  # past cache-ttl: both caches expire, the store is asked again
    assert same(s.outcome(s.login("alice", "right")), first) and store.reads > reads
