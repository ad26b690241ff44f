"""The demo page's endpoints and tokens ([server] demo-page), without a browser.

The browser scenario is tests/test_demo_browser.py; here: the page exists only when
configured, login hands out short-lived tokens (one per user, revoked on expiry, at
stop and at the next start), publish goes to the caller's own account and both are
rate limited.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.task import Clock

from jmappushd.auth.authenticator import Principal
from jmappushd.config import parse_config
from jmappushd.store import MemoryStore
from jmappushd.store.records import Account
from jmappushd.web.demo_api import PUBLISHES_PER_MINUTE
from jmappushd.web.demo_tokens import DEMO_LABEL, DemoTokens
from jmappushd.web.ratelimit import WindowLimit
from tests.support import (
    LiveDaemon,
    basic,
    bearer,
    config_text,
    free_port,
    start_daemon,
    stop_daemon,
)
from tests.test_service import _ours


def demo_config(tmp_path: Path) -> Any:
    text = config_text(tmp_path / "state", free_port(), free_port()).replace(
        "[server]\n", "[server]\ndemo-page = true\n", 1)
    path = tmp_path / "demo.ini"
    path.write_text(text)
    return parse_config(text, str(path), environ={})


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[LiveDaemon]:
    """An in-process daemon with the demo page on."""
    daemon = pytest_twisted.blockon(defer.ensureDeferred(start_daemon(demo_config(tmp_path))))
    yield daemon
    pytest_twisted.blockon(defer.ensureDeferred(stop_daemon(daemon)))


async def login(d: LiveDaemon, user: str = "alice", password: str = "secret") -> str:
    r = await treq.post(d.base + "/demo/login", json={}, headers=basic(user, password))
    assert r.code == 200, await r.text()
    assert r.headers.getRawHeaders("Cache-Control") == ["no-store"]
    body = await r.json()
    assert body["expiresIn"] == 3600 and body["username"] == user
    return str(body["accessToken"])


async def demo_tokens(d: LiveDaemon, user: str = "alice") -> list[Any]:
    return [t for t in await d.app.store.list_tokens(user) if t.label == DEMO_LABEL]


@pytest_twisted.ensureDeferred
async def test_no_demo_page_unless_configured(live: LiveDaemon) -> None:
    """demo-page off (the default): /demo/, its login and its publish do not exist."""
    await live.add_user("alice")
    for method, path in (("GET", "/demo/"), ("POST", "/demo/login"), ("POST", "/demo/publish")):
        r = await treq.request(method, live.base + path, headers=basic("alice", "secret"))
        assert r.code == 404, path
        await r.content()


@pytest_twisted.ensureDeferred
async def test_page_and_files_are_served_locked_down(demo: LiveDaemon) -> None:
    """/demo redirects to /demo/; the page and its script come from the package with a
    content security policy that allows only this daemon."""
    r = await treq.get(demo.base + "/demo", allow_redirects=False)
    assert r.code == 301 and r.headers.getRawHeaders("Location") == ["/demo/"]
    r = await treq.get(demo.base + "/demo/")
    assert r.code == 200
    assert r.headers.getRawHeaders("Content-Type") == ["text/html; charset=utf-8"]
    csp = r.headers.getRawHeaders("Content-Security-Policy")[0]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert b'<script src="demo.js"' in await r.content()
    r = await treq.get(demo.base + "/demo/demo.js")
    assert r.headers.getRawHeaders("Content-Type") == ["text/javascript; charset=utf-8"]
    assert r.headers.getRawHeaders("X-Content-Type-Options") == ["nosniff"]
    assert b"WebSocketPushEnable" in await r.content()
    r = await treq.get(demo.base + "/demo/../etc/passwd")
    assert r.code == 404
    await r.content()


@pytest_twisted.ensureDeferred
async def test_login_gives_a_token_that_replaces_the_previous_one(demo: LiveDaemon) -> None:
    """A password login gets a bearer token for the session (and access_token); a second
    login revokes the first, so a user holds at most one demo token."""
    await demo.add_user("alice")
    first = await login(demo)
    r = await treq.get(demo.base + "/jmap/session", headers=bearer(first))
    assert r.code == 200 and (await r.json())["username"] == "alice"
    second = await login(demo)
    demo.app.auth.invalidate()  # what the generation watcher does within its poll
    r = await treq.get(demo.base + "/jmap/session", headers=bearer(first))
    assert r.code == 401
    await r.content()
    r = await treq.get(demo.base + "/jmap/session", headers=bearer(second))
    assert r.code == 200
    await r.content()
    assert len(await demo_tokens(demo)) == 1


@pytest_twisted.ensureDeferred
async def test_login_needs_the_password(demo: LiveDaemon) -> None:
    """A wrong password → 401; a bearer token cannot mint demo tokens (403)."""
    await demo.add_user("alice")
    r = await treq.post(demo.base + "/demo/login", json={}, headers=basic("alice", "wrong"))
    assert r.code == 401
    await r.content()
    token = await demo.add_token("alice")
    r = await treq.post(demo.base + "/demo/login", json={}, headers=bearer(token))
    assert r.code == 403 and "password" in (await r.json())["detail"]
    assert await demo_tokens(demo) == []


@pytest_twisted.ensureDeferred
async def test_publish_changes_only_the_callers_primary_account(demo: LiveDaemon) -> None:
    """publish records a new state of the asked type in the caller's own account, through
    the hub (durable before 202); bad bodies get 400; no credentials get 401."""
    account = await demo.add_user("alice")
    other = await demo.add_user("bob")
    token = await login(demo)
    r = await treq.post(demo.base + "/demo/publish", json={"type": "Mailbox"},
                        headers=bearer(token))
    assert r.code == 202
    body = await r.json()
    assert body["accountId"] == account and body["type"] == "Mailbox"
    assert set(body) == {"accountId", "type", "state"}
    states = await demo.app.store.current_states([account, other])
    assert states == {account: {"Mailbox": body["state"]}}
    for bad in (b"[]", b'{"type": 5}', b'{"type": "no spaces"}', b"{nope",
                b'{"type": "' + b"x" * 2000 + b'"}'):
        r = await treq.post(demo.base + "/demo/publish", data=bad, headers={
            **bearer(token), "Content-Type": "application/json"})
        assert r.code == 400, bad
        await r.content()
    r = await treq.post(demo.base + "/demo/publish", json={})
    assert r.code == 401
    await r.content()


@pytest_twisted.ensureDeferred
async def test_html_forms_cannot_post(demo: LiveDaemon) -> None:
    """A cross-site form (text/plain, form-encoded) cannot use credentials the browser
    cached: both endpoints want application/json (415 otherwise), before any login."""
    account = await demo.add_user("alice")
    for path in ("/demo/login", "/demo/publish"):
        for kind in ("text/plain", "application/x-www-form-urlencoded"):
            r = await treq.post(demo.base + path, data=b'{"type": "Email"}', headers={
                **basic("alice", "secret"), "Content-Type": kind})
            assert r.code == 415, (path, kind)
            assert (await r.json())["title"] == "Unsupported Media Type"
    assert await demo_tokens(demo) == []
    assert await demo.app.store.current_states([account]) == {}


@pytest_twisted.ensureDeferred
async def test_publish_is_rate_limited(demo: LiveDaemon) -> None:
    """Over PUBLISHES_PER_MINUTE in a minute → 429 with Retry-After; others unaffected."""
    await demo.add_user("alice")
    await demo.add_user("bob")
    alice = await demo.add_token("alice")
    codes = []
    for _ in range(PUBLISHES_PER_MINUTE + 1):
        r = await treq.post(demo.base + "/demo/publish", json={}, headers=bearer(alice))
        codes.append(r.code)
        await r.content()
    # A minute window may turn over during the loop: then all of them were accepted.
    if codes[-1] == 429:
        assert codes == [202] * PUBLISHES_PER_MINUTE + [429]
        assert 1 <= int(r.headers.getRawHeaders("Retry-After")[0]) <= 60
    r = await treq.post(demo.base + "/demo/publish", json={},
                        headers=bearer(await demo.add_token("bob")))
    assert r.code == 202
    await r.content()


def test_window_limit_counts_per_key_and_resets() -> None:
    """limit calls per key per window, the wait until the window ends, a fresh window
    forgets every key."""
    clock = Clock()
    clock.advance(960)  # a window starts here (windows are aligned on the clock)
    limit = WindowLimit(clock, 2, 60)
    assert limit.check("a") is None and limit.check("a") is None
    assert limit.check("b") is None
    clock.advance(15)
    assert limit.check("a") == 45
    clock.advance(45)
    assert limit.check("a") is None
    assert limit._counts == {"a": 1}


# -- the tokens' lifetime, on the memory store and a clock -----------------------------------


def done(d: Any) -> Any:
    results: list[Any] = []
    defer.ensureDeferred(d).addBoth(results.append)
    assert results, "did not complete"
    return results[0]


def alice(store: MemoryStore) -> Principal:
    user = done(store.add_user("alice", "hash", "A"))
    return Principal(user.id, "alice", "password:" + user.id,
                     (Account("A", "alice", True),), "A")


def labelled(store: MemoryStore) -> list[str]:
    return [t.id for t in done(store.list_tokens("alice")) if t.label == DEMO_LABEL]


def test_tokens_expire_after_their_ttl() -> None:
    """A demo token is revoked after its TTL; nothing is left on the clock."""
    store, clock = MemoryStore(), Clock()
    store.open()
    tokens = DemoTokens(store, clock, ttl=100)
    done(tokens.issue(alice(store)))
    assert len(labelled(store)) == 1 and tokens.live_count == 1
    clock.advance(100)
    assert labelled(store) == [] and tokens.live_count == 0
    assert clock.getDelayedCalls() == []


def test_revoke_all_at_stop_and_left_overs_at_start() -> None:
    """revoke_all (stop) revokes this run's tokens and cancels their timers;
    revoke_left_over (start) revokes demo tokens in the store, and only those."""
    store, clock = MemoryStore(), Clock()
    store.open()
    principal = alice(store)
    tokens = DemoTokens(store, clock)
    done(tokens.issue(principal))
    done(tokens.revoke_all())
    assert labelled(store) == [] and clock.getDelayedCalls() == []
    done(store.create_token("alice", b"\x01" * 32, DEMO_LABEL))  # a killed run's
    done(store.create_token("alice", b"\x02" * 32, "laptop"))
    assert done(DemoTokens(store, clock).revoke_left_over()) == 1
    assert [t.label for t in done(store.list_tokens("alice"))] == ["laptop"]


@pytest_twisted.ensureDeferred
async def test_stop_revokes_the_tokens_and_leaves_no_timer(tmp_path: Path) -> None:
    """Stopping the daemon revokes the live demo tokens (their expiry timers go with them);
    a token a killed run left in the store is revoked when the page starts again."""
    config = demo_config(tmp_path)
    daemon = await start_daemon(config)
    await daemon.add_user("alice")
    await daemon.add_user("bob")
    await login(daemon)
    assert any("demo_tokens" in name for name in _ours())
    # bob never logged in with this run: his token stands for one a killed run left.
    await daemon.app.store.create_token("bob", b"\x03" * 32, DEMO_LABEL)
    await stop_daemon(daemon)
    # Only the demo's own timers: other tests' connections on the shared reactor may still
    # be closing.
    assert [name for name in _ours() if "demo" in name] == []
    daemon = await start_daemon(config)
    try:
        assert await demo_tokens(daemon, "alice") == []
        assert await demo_tokens(daemon, "bob") == []
    finally:
        await stop_daemon(daemon)
