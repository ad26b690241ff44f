"""The hub: records state changes durably and fans them out to listeners.

Flow: ``publish`` writes the change to the store (one transaction, a new
sequence number), then announces it on the bus; whatever the bus delivers is
handed to every local listener that watches one of the changed accounts. The
in-process :class:`LocalBus` delivers at once; a cluster bus (PostgreSQL
LISTEN/NOTIFY, Redis pub/sub) implements the same two-method interface.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from jmappushd.core.position import make_token, parse_token
from jmappushd.store.interface import IStateLog

StateMap = Mapping[str, Mapping[str, str]]

# At most this many publishes share one transaction.
MAX_GROUP_COMMIT = 512


@dataclass(frozen=True, eq=False)
class Change:
    """One recorded change: its sequence number, the token after it, and what changed."""

    seq: int
    token: str
    changed: StateMap


_Queued = tuple[StateMap, "defer.Deferred[Change]"]


class ChangeListener(Protocol):
    """Anything that wants changes: an EventSource stream, a WebSocket, push delivery."""

    def change_published(self, change: Change) -> None: ...


class IBus(Interface):
    """Carries recorded changes to every daemon that has listeners (one, for now)."""

    def announce(change: Change) -> None:
        """Tell every node (this one included) that ``change`` was recorded."""

    def set_receiver(receiver: Callable[[Change], None]) -> None:
        """Register the local hub's entry point for announced changes."""


@implementer(IBus)
class LocalBus:
    """The in-process bus: an announcement is delivered synchronously to this node."""

    def __init__(self) -> None:
        self._receiver: Callable[[Change], None] | None = None

    def announce(self, change: Change) -> None:
        if self._receiver is not None:
            self._receiver(change)

    def set_receiver(self, receiver: Callable[[Change], None]) -> None:
        self._receiver = receiver


def restrict(
    changed: StateMap, account_ids: Collection[str], types: frozenset[str] | None
) -> dict[str, dict[str, str]]:
    """Keep only readable accounts and wanted types; drop what ends up empty (ES-12).

    The inner maps may be ``changed``'s own (with ``types`` None): results are read-only.
    """
    out: dict[str, dict[str, str]] = {}
    if len(account_ids) < len(changed):
        # Walk the smaller side: a batched publish of many accounts meets listeners
        # that read one or two of them.
        pairs = [(a, changed[a]) for a in account_ids if a in changed]
    else:
        pairs = [(a, t) for a, t in changed.items() if a in account_ids]
    for account_id, type_states in pairs:
        if types is None:
            kept = type_states  # every type: nothing to filter, nothing to copy
        else:
            kept = {t: s for t, s in type_states.items() if t in types}
        if kept:
            out[account_id] = kept  # type: ignore[assignment]
    return out


def merge(into: dict[str, dict[str, str]], changed: StateMap) -> None:
    """Newest state per account and type wins (states are idempotent, SC-2).

    ``into``'s inner maps are its own: ``changed`` (perhaps from :func:`restrict`) is
    only read.
    """
    for account_id, type_states in changed.items():
        into.setdefault(account_id, {}).update(type_states)


class HubSubscription:
    """A listener's registration; ``cancel`` removes it at once (and is idempotent)."""

    __slots__ = ("_hub", "account_ids", "active", "listener", "multi")

    def __init__(self, hub: Hub, listener: ChangeListener, account_ids: frozenset[str]) -> None:
        self._hub = hub
        self.listener = listener
        self.account_ids = account_ids
        self.multi = len(account_ids) > 1
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._hub._remove(self)


class Hub:
    """Durable record of states plus fan-out to listeners indexed by account."""

    log = Logger()

    def __init__(self, store: IStateLog, bus: IBus | None = None) -> None:
        self._store = store
        self._bus: IBus = bus if bus is not None else LocalBus()
        self._bus.set_receiver(self._receive)
        self._by_account: dict[str, dict[ChangeListener, HubSubscription]] = {}
        self._count = 0
        self.epoch = ""
        self.last_seq = 0
        self._queue: list[_Queued] = []
        self._writing = False
        self._started = False
        self._waiting: list[defer.Deferred[None]] = []
        self.publish_count = 0

    async def start(self) -> None:
        """Learn the store's epoch and position; publishes and catch-ups wait for this."""
        self.epoch, self.last_seq = await self._store.position()
        self._started = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    async def _wait_started(self) -> None:
        if not self._started:
            d: defer.Deferred[None] = defer.Deferred()
            self._waiting.append(d)
            await d

    @property
    def token(self) -> str:
        """The token for everything this node has fanned out so far."""
        return make_token(self.epoch, self.last_seq)

    @property
    def listener_count(self) -> int:
        return self._count

    async def publish(self, changed: StateMap) -> Change:
        """Record ``changed`` durably, then announce it. Fires only once it is durable.

        Publishes that arrive while a write is in flight are committed together in
        the next transaction (group commit): each still gets its own sequence
        number and its own Deferred, which fires after that commit.
        """
        await self._wait_started()
        waiter: defer.Deferred[Change] = defer.Deferred()
        self._queue.append((changed, waiter))
        if not self._writing:
            self._write_queued()
        return await waiter

    def _write_queued(self) -> None:
        batch = self._queue[:MAX_GROUP_COMMIT]
        del self._queue[:MAX_GROUP_COMMIT]
        self._writing = True
        d = self._store.record_changes_batch([changed for changed, _ in batch])
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(batch,),
                       errbackArgs=(batch,))

    def _written(self, seqs: list[int], batch: list[_Queued]) -> None:
        self._writing = False
        if self._queue:
            self._write_queued()
        for seq, (changed, waiter) in zip(seqs, batch, strict=True):
            change = Change(seq=seq, token=make_token(self.epoch, seq), changed=changed)
            self.publish_count += 1
            try:
                self._bus.announce(change)
            finally:
                waiter.callback(change)

    def _write_failed(self, failure: Failure, batch: list[_Queued]) -> None:
        self._writing = False
        if self._queue:
            self._write_queued()
        for _, waiter in batch:
            waiter.errback(failure)

    def subscribe(self, listener: ChangeListener, account_ids: Iterable[str]) -> HubSubscription:
        """Deliver changes touching ``account_ids`` to ``listener`` until cancelled."""
        subscription = HubSubscription(self, listener, frozenset(account_ids))
        for account_id in subscription.account_ids:
            self._by_account.setdefault(account_id, {})[listener] = subscription
        self._count += 1
        return subscription

    def _remove(self, subscription: HubSubscription) -> None:
        for account_id in subscription.account_ids:
            listeners = self._by_account.get(account_id)
            if listeners is None:
                continue
            listeners.pop(subscription.listener, None)
            if not listeners:
                del self._by_account[account_id]
        self._count -= 1

    def _receive(self, change: Change) -> None:
        if change.seq > self.last_seq:
            self.last_seq = change.seq
        by_account = self._by_account
        seen: set[ChangeListener] | None = None
        for account_id in change.changed:
            listeners = by_account.get(account_id)
            if not listeners:
                continue
            # A copy: a listener may leave (closeafter) while it is being called.
            for listener, subscription in tuple(listeners.items()):
                if subscription.multi:
                    # It may watch several of the changed accounts: call it once.
                    if seen is None:
                        seen = {listener}
                    elif listener in seen:
                        continue
                    else:
                        seen.add(listener)
                try:
                    listener.change_published(change)
                except Exception:
                    self.log.failure("listener {listener!r} failed on change {seq}",
                                     listener=listener, seq=change.seq)

    async def catch_up(
        self, token: str | None, account_ids: Collection[str]
    ) -> tuple[dict[str, dict[str, str]], str, bool]:
        """What changed for ``account_ids`` since ``token``.

        Returns ``(states, token_now, known)``. An unknown or expired token gives
        the full current state (``known`` False). The returned token never
        overstates: it is taken before the query, so a change racing with it is
        delivered again live rather than lost (states are idempotent).
        """
        await self._wait_started()
        as_of = self.last_seq
        now_token = make_token(self.epoch, as_of)
        seq = parse_token(token, self.epoch, as_of)
        if seq is None:
            return await self._store.current_states(account_ids), now_token, False
        if seq >= as_of:
            return {}, now_token, True
        return await self._store.changes_since(seq, account_ids), now_token, True
