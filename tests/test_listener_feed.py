"""The shared listener machine (core.feed), with a fake writer and the real hub."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from jmappushd.core.feed import Feed, FeedContext
from jmappushd.core.hub import Change, Hub, LocalBus
from jmappushd.core.position import make_token
from jmappushd.core.views import ViewCache


def encode(changed: Any, token: str) -> bytes:
    return repr((token, {a: dict(t) for a, t in sorted(changed.items())})).encode()


class Store:
    def __init__(self) -> None:
        self.query: defer.Deferred[Any] | None = None

    def position(self) -> defer.Deferred[tuple[str, int]]:
        return defer.succeed(("ep", 5))

    def changes_since(self, seq: int, account_ids: Any) -> defer.Deferred[Any]:
        self.query = defer.Deferred()
        return self.query

    current_states = changes_since


class Recorder(Feed):
    __slots__ = ("out",)

    def __init__(self, ctx: FeedContext, accounts: frozenset[str]) -> None:
        super().__init__(ctx, accounts, None)
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
        self.ctx = FeedContext(self.clock, self.hub, throttle, ViewCache(encode))
        self.seq = 5

    def publish(self, changed: dict[str, dict[str, str]]) -> str:
        self.seq += 1
        token = make_token("ep", self.seq)
        self.bus.announce(Change(self.seq, token, changed))
        return token


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
    feed.catch_up(make_token("ep", 2))
    live = env.publish({"A": {"Email": "new"}})
    assert feed.out == []
    assert env.store.query is not None
    env.store.query.callback({"A": {"Email": "old", "Mailbox": "m"}})
    assert feed.out == [encode({"A": {"Email": "old", "Mailbox": "m"}}, "ep-5"),
                        encode({"A": {"Email": "new"}}, live)]


def test_merging_catch_up_folds_held_changes_into_one_message() -> None:
    """WS-19: with MERGE_CATCH_UP the held change wins over the catch-up's older state,
    in one message with the newer token."""
    env = Env()
    feed = Resync(env.ctx, frozenset({"A"}))
    feed.listen()
    feed.catch_up(make_token("ep", 2))
    live = env.publish({"A": {"Email": "new"}})
    assert env.store.query is not None
    env.store.query.callback({"A": {"Email": "old", "Mailbox": "m"}})
    assert feed.out == [encode({"A": {"Email": "new", "Mailbox": "m"}}, live)]


def test_unknown_token_with_nothing_changed_resyncs_only_when_asked() -> None:
    """C-WS-8: RESYNC_EMPTY sends one empty message with the fresh token for an unknown
    token; the default (EventSource, C-ES-3) never sends an empty one."""
    env = Env()
    quiet, resync = Recorder(env.ctx, frozenset({"A"})), Resync(env.ctx, frozenset({"A"}))
    for feed in (quiet, resync):
        feed.listen()
        feed.catch_up_done({}, "ep-5", known=False)
    assert quiet.out == [] and resync.out == [encode({}, "ep-5")]


def test_failed_catch_up_sends_what_was_held_by_default() -> None:
    """A failed catch-up query does not lose the live changes held meanwhile."""
    env = Env()
    feed = Recorder(env.ctx, frozenset({"A"}))
    feed.listen()
    feed.catch_up(make_token("ep", 2))
    live = env.publish({"A": {"Email": "new"}})
    assert env.store.query is not None
    env.store.query.errback(Failure(RuntimeError("db down")))
    assert feed.out == [encode({"A": {"Email": "new"}}, live)]


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
    assert feed.out == [encode({"A": {"Email": "e2", "Mailbox": "m"}}, last)]


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
    assert feed.out[1:] == [encode({"C": {"Email": "c1"}}, last)]
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
