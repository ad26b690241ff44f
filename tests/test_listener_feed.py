"""The shared listener machine (core.feed), with a fake writer and the real hub."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from jmappushd.core.feed import Feed, FeedContext
from jmappushd.core.hub import Change, Hub, LocalBus
from jmappushd.core.position import ResumptionTokens
from jmappushd.core.views import ViewCache

USER = "u1"


def wire(position: int | None, changed: Any) -> bytes:
    """What the test encoder writes: the position the token opens to (for USER) and the
    change; tokens themselves are sealed afresh, so tests compare what they stand for."""
    return repr((position, {a: dict(t) for a, t in sorted(changed.items())})).encode()


class Store:
    def __init__(self) -> None:
        self.query: defer.Deferred[Any] | None = None
        self.asked: list[tuple[str, int | None]] = []

    def position(self) -> defer.Deferred[tuple[str, int]]:
        return defer.succeed(("ep", 5))

    def changes_since(self, seq: int, account_ids: Any) -> defer.Deferred[Any]:
        self.asked.append(("changes_since", seq))
        self.query = defer.Deferred()
        return self.query

    def current_states(self, account_ids: Any) -> defer.Deferred[Any]:
        self.asked.append(("current_states", None))
        self.query = defer.Deferred()
        return self.query


class Recorder(Feed):
    __slots__ = ("out",)

    def __init__(self, ctx: FeedContext, accounts: frozenset[str], user: str = USER) -> None:
        super().__init__(ctx, accounts, None, user_id=user)
        self.out: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        self.out.append(data)


class Resync(Recorder):
    __slots__ = ()
    MERGE_CATCH_UP = True
    RESYNC_EMPTY = True


class Env:
    def __init__(self, throttle: float = 0.0) -> None:
        self.clock = Clock()
        self.bus = LocalBus()
        self.store = Store()
        self.hub = Hub(self.store, self.bus)  # type: ignore[arg-type]
        defer.ensureDeferred(self.hub.start())
        self.ctx = FeedContext(self.clock, self.hub, throttle, ViewCache(self.encode))
        self.seq = 5

    def encode(self, changed: Any, token: str) -> bytes:
        return wire(self.hub.tokens.open(USER, token), changed)

    def token(self, position: int) -> str:
        return self.hub.tokens.seal(USER, position)

    def publish(self, changed: dict[str, dict[str, str]]) -> int:
        self.seq += 1
        self.bus.announce(Change(self.seq, changed))
        return self.seq


def test_idle_feed_owns_no_throttle_and_no_timer() -> None:
    """An idle listener is cheap: no throttle object, no timer until a change arrives;
    changes of other accounts do not make one either."""
    env = Env(throttle=1.0)
    feed = Recorder(env.ctx, frozenset({"A"}))
    feed.listen()
    env.publish({"B": {"Email": "b"}})
    assert feed.throttle is None and env.clock.getDelayedCalls() == []
    env.publish({"A": {"Email": "a"}})
    assert feed.throttle is not None and len(feed.out) == 1


def test_catch_up_holds_live_changes_then_sends_them_after() -> None:
    """ES-10: subscribed before the query; live changes are held (merged) and sent after
    the catch-up, as a second message (EventSource's rule)."""
    env = Env()
    feed = Recorder(env.ctx, frozenset({"A"}))
    feed.listen()
    feed.catch_up(env.token(2))
    live = env.publish({"A": {"Email": "new"}})
    assert feed.out == []
    assert env.store.query is not None
    env.store.query.callback({"A": {"Email": "old", "Mailbox": "m"}})
    assert feed.out == [wire(5, {"A": {"Email": "old", "Mailbox": "m"}}),
                        wire(live, {"A": {"Email": "new"}})]


def test_merging_catch_up_folds_held_changes_into_one_message() -> None:
    """WS-19: with MERGE_CATCH_UP the held change wins over the catch-up's older state,
    in one message with the newer token."""
    env = Env()
    feed = Resync(env.ctx, frozenset({"A"}))
    feed.listen()
    feed.catch_up(env.token(2))
    live = env.publish({"A": {"Email": "new"}})
    assert env.store.query is not None
    env.store.query.callback({"A": {"Email": "old", "Mailbox": "m"}})
    assert feed.out == [wire(live, {"A": {"Email": "new", "Mailbox": "m"}})]


def test_unknown_token_with_nothing_changed_resyncs_only_when_asked() -> None:
    """C-WS-8: RESYNC_EMPTY sends one empty message with the fresh token for an unknown
    token; the default (EventSource, C-ES-3) never sends an empty one."""
    env = Env()
    quiet, resync = Recorder(env.ctx, frozenset({"A"})), Resync(env.ctx, frozenset({"A"}))
    for feed in (quiet, resync):
        feed.listen()
        feed.catch_up_done({}, env.token(5), known=False)
    assert quiet.out == [] and resync.out == [wire(5, {})]


def test_failed_catch_up_sends_what_was_held_by_default() -> None:
    """A failed catch-up query does not lose the live changes held meanwhile."""
    env = Env()
    feed = Recorder(env.ctx, frozenset({"A"}))
    feed.listen()
    feed.catch_up(env.token(2))
    live = env.publish({"A": {"Email": "new"}})
    assert env.store.query is not None
    env.store.query.errback(Failure(RuntimeError("db down")))
    assert feed.out == [wire(live, {"A": {"Email": "new"}})]


def test_pause_merges_and_resume_sends_once() -> None:
    """Back-pressure: while paused nothing is written and changes merge; resume sends
    the merged newest state once."""
    env = Env()
    feed = Recorder(env.ctx, frozenset({"A"}))
    feed.listen()
    feed.pause()
    env.publish({"A": {"Email": "e1"}})
    last = env.publish({"A": {"Email": "e2", "Mailbox": "m"}})
    assert feed.out == []
    feed.resume()
    assert feed.out == [wire(last, {"A": {"Email": "e2", "Mailbox": "m"}})]


def test_set_accounts_resubscribes_and_drops_pending_of_lost_accounts() -> None:
    """Grant changes: pending data of a lost account is dropped; the new account's
    changes arrive; the hub has one registration for the feed."""
    env = Env(throttle=1.0)
    feed = Recorder(env.ctx, frozenset({"A", "B"}))
    feed.listen()
    env.publish({"A": {"Email": "a1"}})
    env.publish({"B": {"Email": "pending"}})
    feed.set_accounts(frozenset({"A", "C"}))
    last = env.publish({"C": {"Email": "c1"}})
    env.clock.advance(1)
    assert feed.out[1:] == [wire(last, {"C": {"Email": "c1"}})]
    assert env.hub.listener_count == 1


def test_cancel_releases_hub_and_timer_at_once() -> None:
    """cancel() leaves the hub and cancels the throttle's timer; nothing is sent after."""
    env = Env(throttle=1.0)
    feed = Recorder(env.ctx, frozenset({"A"}))
    feed.listen()
    env.publish({"A": {"Email": "a1"}})
    env.publish({"A": {"Email": "a2"}})
    assert len(env.clock.getDelayedCalls()) == 1
    feed.cancel()
    assert env.hub.listener_count == 0 and env.clock.getDelayedCalls() == []
    env.clock.advance(5)
    assert len(feed.out) == 1


def test_immediate_flush_reuses_the_views_bytes() -> None:
    """Fan-out: an immediate flush of one unmerged change writes the bytes built once
    for every listener with the same view."""
    env = Env()
    feeds = [Recorder(env.ctx, frozenset({"A"})) for _ in range(3)]
    for feed in feeds:
        feed.listen()
    env.publish({"A": {"Email": "a1"}})
    first = feeds[0].out[0]
    assert all(f.out[0] is first for f in feeds)


def test_tokens_are_per_user_and_sealed_once_per_change_for_one_user(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ES-9, WS-19, C-ES-4: listeners of one user share one sealed token (and the bytes)
    per change, sealed once however many there are; another user reading the same
    account gets a token of its own, which the first user cannot open."""
    env = Env()
    seals: list[tuple[str, int]] = []
    original = ResumptionTokens.seal

    def counting(self: ResumptionTokens, owner: str, position: int) -> str:
        seals.append((owner, position))
        return original(self, owner, position)

    monkeypatch.setattr(ResumptionTokens, "seal", counting)
    tokens: dict[str, list[str]] = {"u1": [], "u2": []}

    class Capture(Feed):
        __slots__ = ("out",)

        def __init__(self, user: str) -> None:
            super().__init__(env.ctx, frozenset({"A"}), None, user_id=user)
            self.out: list[bytes] = []

        def deliver(self, data: bytes) -> None:
            self.out.append(data)

    env.ctx.views.encoder = lambda changed, token: token.encode()
    feeds = [Capture("u1") for _ in range(50)] + [Capture("u2") for _ in range(50)]
    for feed in feeds:
        feed.listen()
    seq = env.publish({"A": {"Email": "a1"}})
    for feed in feeds:
        tokens[feed.user_id].append(feed.out[0].decode())
    assert sorted(seals) == [("u1", seq), ("u2", seq)]
    assert len(set(tokens["u1"])) == 1 and len(set(tokens["u2"])) == 1
    mine, theirs = tokens["u1"][0], tokens["u2"][0]
    assert mine != theirs
    assert env.hub.tokens.open("u1", mine) == seq and env.hub.tokens.open("u2", theirs) == seq
    assert env.hub.tokens.open("u1", theirs) is None
    assert all(f.out[0] is feeds[0].out[0] for f in feeds[:50])


def test_catch_up_with_another_users_token_is_a_full_resync() -> None:
    """C-ES-3, C-WS-8: a token sealed for another user does not open: the feed gets the
    full current state (an unknown token), never a delta from that user's position."""
    env = Env()
    feed = Recorder(env.ctx, frozenset({"A"}))
    feed.listen()
    feed.catch_up(env.hub.tokens.seal("u2", 2))
    assert env.store.asked == [("current_states", None)]
