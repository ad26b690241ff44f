"""The listener machine every live transport shares (DESIGN: one listener layer).

A :class:`Feed` subscribes to the hub for the accounts its credentials may read;
optionally catches up from a resumption token while *holding* live changes
(merged, newest wins), subscribing before the query so nothing is lost (ES-10,
WS-19); then passes changes through a leading-edge
:class:`~jmappushd.core.throttle.CoalescingThrottle` (made on the first change:
an idle feed owns no timer and little memory) and hands the encoded bytes to
:meth:`Feed.deliver`, the transport's writer. Restriction and encoding happen
once per view in the transport's shared :class:`~jmappushd.core.views.ViewCache`.

Transports subclass it and set the few things that legitimately differ:
``MERGE_CATCH_UP`` (WebSocket folds held changes into the catch-up message;
EventSource sends them as a second event), ``RESYNC_EMPTY`` (C-WS-8: an unknown
token with nothing changed still gets one empty message with a fresh token) and
:meth:`catch_up_failed` (EventSource ends the stream, WebSocket flushes what it
held).

Every token a feed sends is sealed for its user (``user_id``): the hub's shared
sealing for live changes, a fresh one for a catch-up (:mod:`jmappushd.core.position`).
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from jmappushd.core.hub import Change, Hub, HubSubscription, merge, restrict
from jmappushd.core.throttle import CoalescingThrottle
from jmappushd.core.views import Types, ViewCache

StateMap = Mapping[str, Mapping[str, str]]
CatchUp = tuple[dict[str, dict[str, str]], str, bool]


class FeedContext:
    """What every feed of one transport shares (one object, not one per listener)."""

    def __init__(self, clock: IReactorTime, hub: Hub, throttle_s: float, views: ViewCache
                 ) -> None:
        self.clock = clock
        self.hub = hub
        self.throttle_s = throttle_s
        self.views = views


class Feed:
    """Hub listener + catch-up + throttle for one listener; see the module docstring."""

    __slots__ = ("_ctx", "_held", "_held_token", "_paused", "_subscription", "_throttle",
                 "account_ids", "closed", "types", "user_id")

    MERGE_CATCH_UP = False
    RESYNC_EMPTY = False

    def __init__(self, ctx: FeedContext, account_ids: frozenset[str], types: Types, *,
                 user_id: str) -> None:
        self._ctx = ctx
        self.user_id = user_id  # whose tokens this feed sends and accepts
        self.account_ids = account_ids
        self.types = types
        self.closed = False
        self._paused = False
        self._subscription: HubSubscription | None = None
        self._held: dict[str, dict[str, str]] | None = None
        self._held_token = ""
        self._throttle: CoalescingThrottle | None = None

    # -- what the transport provides --

    def deliver(self, data: bytes) -> None:
        """Write one encoded message (the transport's writer)."""
        raise NotImplementedError

    def catch_up_failed(self, failure: Failure) -> None:
        """The catch-up query failed; by default send what was held."""
        held, self._held = self._held, None
        if not self.closed and held:
            self._throttled().offer(held, self._held_token)

    # -- life --

    def listen(self) -> None:
        """Subscribe to the hub (before any catch-up query, so nothing is lost)."""
        self._subscription = self._ctx.hub.subscribe(self, self.account_ids)

    def catch_up(self, token: str | None) -> defer.Deferred[None]:
        """Send what changed since ``token`` first; live changes are held meanwhile."""
        self.hold()
        d = defer.ensureDeferred(self._ctx.hub.catch_up(token, self.account_ids, self.user_id))
        return d.addCallbacks(self._caught_up, self.catch_up_failed)

    def _caught_up(self, result: CatchUp) -> None:
        states, token, known = result
        self.catch_up_done(states, token, known)

    def hold(self) -> None:
        """Keep live changes aside (merged) while the catch-up query runs."""
        if self._held is None:
            self._held = {}

    def catch_up_done(self, states: StateMap, token: str, known: bool = True) -> None:
        """Send the catch-up (restricted here), then whatever arrived meanwhile."""
        held, self._held = self._held, None
        if self.closed:
            return
        missed: StateMap = restrict(states, self.account_ids, self.types)
        if held and self.MERGE_CATCH_UP:
            merged: dict[str, dict[str, str]] = {}
            merge(merged, missed)  # restrict's maps are read-only: merge into new ones
            merge(merged, held)
            missed, token, held = merged, self._held_token, None
        if missed:
            self._throttled().offer(missed, token)
        elif self.RESYNC_EMPTY and not known and not held:
            self.deliver(self._ctx.views.encoder({}, token))
        if held and not self.closed:
            self._throttled().offer(held, self._held_token)

    def change_published(self, change: Change) -> None:
        """Hub callback: keep what this listener may see and wants (ES-12)."""
        if self.closed:
            return
        changed = self._ctx.views.restricted(change, self.account_ids, self.types)
        if not changed:
            return
        token = self._ctx.hub.tokens.shared(self.user_id, change.position)
        if self._held is not None:
            merge(self._held, changed)
            self._held_token = token
            return
        throttle = self._throttle
        if throttle is None:
            throttle = self._throttled()
        throttle.offer(changed, token)

    def set_accounts(self, account_ids: frozenset[str]) -> None:
        """Grants changed: listen to the new set; forget pending data of lost accounts."""
        if self.closed or account_ids == self.account_ids:
            return
        if self._subscription is not None:
            self._subscription.cancel()
        self.account_ids = account_ids
        self._subscription = self._ctx.hub.subscribe(self, account_ids)
        throttled = self._throttle.pending if self._throttle is not None else {}
        for pending in (throttled, self._held or {}):
            for account_id in [a for a in pending if a not in account_ids]:
                del pending[account_id]

    def pause(self) -> None:
        """Back-pressure: keep merging, write nothing until :meth:`resume`."""
        self._paused = True
        if self._throttle is not None:
            self._throttle.pause()

    def resume(self) -> None:
        if self._paused and not self.closed:
            self._paused = False
            if self._throttle is not None:
                self._throttle.resume()

    def cancel(self) -> None:
        """Release the hub subscription, the throttle's timer and pending data; idempotent."""
        self.closed = True
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._throttle is not None:
            self._throttle.cancel()
        self._held = None

    # -- inside --

    @property
    def throttle(self) -> CoalescingThrottle | None:
        """The throttle, once the first change made it."""
        return self._throttle

    def _throttled(self) -> CoalescingThrottle:
        throttle = self._throttle
        if throttle is None:
            ctx = self._ctx
            throttle = self._throttle = CoalescingThrottle(ctx.clock, ctx.throttle_s, self._flush)
            if self._paused:
                throttle.pause()
        return throttle

    def _flush(self, changed: StateMap, token: str) -> None:
        if self.closed or not changed:
            return
        self.deliver(self._ctx.views.encode(changed, token, self.account_ids, self.types))
