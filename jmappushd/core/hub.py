"""The hub: records state changes durably and fans them out to listeners.

Flow: ``publish`` writes the change to the store (one transaction, a new
sequence number), then announces it on the bus; whatever the bus delivers is
handed to every local listener that watches one of the changed accounts. The
in-process :class:`LocalBus` delivers at once; a cluster bus (PostgreSQL
LISTEN/NOTIFY, Redis pub/sub) implements the same two-method interface.

Positions: ``Hub.last_seq`` is the *contiguous watermark*, the seq up to which
every change has been received from the bus. A cluster bus may deliver out of
order or lose a wake-up, so "highest seq seen" would let a resumption token skip
a change this node never fanned out. Changes are still fanned out on arrival; a
change that arrives above a gap is handed to listeners with the watermark as its
:attr:`Change.position` (what its resumption token will stand for), never with a
position claiming the unseen seqs below it. :meth:`Hub.fill_gap` re-reads a change
log to close a gap that will not close by itself.

Tokens: the hub deals in positions; :attr:`Hub.tokens` (loaded at start from the
store's metadata, see :mod:`jmappushd.core.position`) seals them per user, and
:meth:`Hub.catch_up` opens the token a listener brings.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from jmappushd.core.position import NotStarted, ResumptionTokens, load_key, new_key
from jmappushd.core.signal import StartSignal
from jmappushd.store.interface import IMetadataStore, IStateLog

StateMap = Mapping[str, Mapping[str, str]]

# At most this many publishes share one transaction.
MAX_GROUP_COMMIT = 512


class Change:
    """One recorded change: its sequence number, what changed, a safe resume position.

    ``position`` is what a resumption token sent with it may stand for: every change
    up to it has been seen. It is ``seq`` itself unless the change arrived above a
    gap, where it is the (lower) contiguous watermark. Read-only by convention.
    """

    __slots__ = ("changed", "position", "seq")

    def __init__(self, seq: int, changed: StateMap, position: int | None = None) -> None:
        self.seq = seq
        self.changed = changed
        self.position = seq if position is None else position

    def __repr__(self) -> str:
        return f"Change(seq={self.seq}, position={self.position})"


_Queued = tuple[StateMap, "defer.Deferred[Change]"]


class ChangeListener(Protocol):
    """Anything that wants changes: an EventSource stream, a WebSocket, push delivery."""

    def change_published(self, change: Change) -> None: ...


class ChangeLog(Protocol):
    """The durable change log read back by :meth:`Hub.fill_gap` (a cluster store's)."""

    def changes_after(self, seq: int) -> defer.Deferred[Sequence[tuple[int, StateMap]]]:
        """Every recorded ``(seq, changed)`` after ``seq``, in seq order, from one snapshot.

        A seq missing below the highest one returned was never committed (a hole in
        the sequence), so the hub may step over it.
        """
        ...


class IBus(Interface):
    """Carries recorded changes to every daemon that has listeners (one, for now)."""

    def announce(change: Change) -> None:
        """Tell every node (this one included) that ``change`` was recorded."""

    def set_receiver(receiver: Callable[[Change], None]) -> None:
        """Register the local hub's entry point for announced changes."""

    def reach(seq: int) -> defer.Deferred[None]:
        """Try to bring this node up to ``seq`` now (a token another node sealed there);
        fires when done trying, whether or not it got there (bounded work)."""


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

    def reach(self, seq: int) -> defer.Deferred[None]:
        return defer.succeed(None)  # one node: nothing is recorded that it has not seen


def restrict(
    changed: StateMap, account_ids: Collection[str], types: frozenset[str] | None
) -> dict[str, Mapping[str, str]]:
    """Keep only readable accounts and wanted types; drop what ends up empty (ES-12).

    The inner maps may be ``changed``'s own (with ``types`` None): results are read-only.
    """
    out: dict[str, Mapping[str, str]] = {}
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
            out[account_id] = kept
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

    def __init__(self, store: IStateLog, bus: IBus | None = None,
                 keys: IMetadataStore | None = None) -> None:
        self._store = store
        # Where the token key lives: the store itself, unless it keeps no metadata (a
        # test's bare state log), where tokens are good for this process only.
        if keys is None and IMetadataStore.providedBy(store):
            keys = IMetadataStore(store)
        self._keys = keys
        # Seals and opens resumption tokens once start() has loaded the key.
        self.tokens: ResumptionTokens = NotStarted()
        self._bus: IBus = bus if bus is not None else LocalBus()
        self._bus.set_receiver(self._receive)
        self._by_account: dict[str, dict[ChangeListener, HubSubscription]] = {}
        self._count = 0
        self.epoch = ""
        self.last_seq = 0  # the contiguous watermark: every change up to it was received
        self._ahead: set[int] = set()  # received above a gap; empty while delivery is in order
        self._queue: list[_Queued] = []
        self._writing = False
        # Recorded batches not yet announced, oldest first: a store answering at once
        # re-enters _written for the next batch before this one was announced.
        self._recorded: deque[tuple[list[int], list[_Queued]]] = deque()
        self._announcing = False
        self._started = StartSignal()

    async def start(self) -> None:
        """Learn the store's epoch, position and token key; publishes and catch-ups wait
        for this (and fail with the same error if the store cannot tell)."""
        try:
            self.epoch, position = await self._store.position()
            key = await load_key(self._keys) if self._keys is not None else new_key()
            self.tokens = ResumptionTokens(key, self.epoch)
        except Exception:
            self._started.fire(Failure())
            raise
        self._advance_to(position)  # all of it durable; a bus may have delivered some
        self._started.fire()

    async def _wait_started(self) -> None:
        if not self._started.done:
            await self._started.wait()

    @property
    def highest_seq(self) -> int:
        """The highest seq received; above ``last_seq`` only while a gap is open."""
        return max(self._ahead, default=self.last_seq)

    @property
    def listener_count(self) -> int:
        return self._count

    def watched_accounts(self) -> list[str]:
        """Every account some local listener watches (gateway polling reads these)."""
        return list(self._by_account)

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
        # maybeDeferred: a store raising at once still answers this batch's waiters.
        d = defer.maybeDeferred(self._store.record_changes_batch,
                                [changed for changed, _ in batch])
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(batch,),
                       errbackArgs=(batch,))

    def _written(self, seqs: list[int], batch: list[_Queued]) -> None:
        """Announce each recorded change and answer its publish, whatever the bus does.

        The changes are durable: a bus that fails to announce one is logged (with the
        seq) and its publish still fires; a gap it leaves is for :meth:`fill_gap`.
        """
        self._writing = False
        self._recorded.append((seqs, batch))
        if self._queue:
            # The next transaction commits while this batch is fanned out.
            self._write_queued()
        if self._announcing:
            return  # re-entered by a store that answered at once: announced in order below
        self._announcing = True
        try:
            while self._recorded:
                self._announce(*self._recorded.popleft())
        finally:
            self._announcing = False

    def _announce(self, seqs: list[int], batch: list[_Queued]) -> None:
        if len(seqs) != len(batch):
            failure = Failure(RuntimeError(f"store gave {len(seqs)} seqs for {len(batch)}"))
            for _, waiter in batch:
                waiter.errback(failure)
            return
        announce = self._bus.announce
        for seq, (changed, waiter) in zip(seqs, batch, strict=True):
            change = Change(seq, changed)
            try:
                announce(change)
            except Exception:
                self.log.failure("announcing recorded change {seq} failed", seq=seq)
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
        """The bus's entry point: move the watermark, then fan out at once."""
        seq = change.seq
        if seq == self.last_seq + 1 and not self._ahead:
            self.last_seq = seq  # in order (the LocalBus case): its own seq is safe
        elif seq > self.last_seq:
            change = self._out_of_order(change)
        self._fan_out(change)

    def _out_of_order(self, change: Change) -> Change:
        """Track a change around a gap; hand it to listeners with the watermark's position.

        A token for its own seq would claim every seq below it, some not yet seen.
        """
        seq = change.seq
        ahead = self._ahead
        if seq == self.last_seq + 1:
            while seq + 1 in ahead:  # the gap closes: absorb what was waiting above it
                seq += 1
                ahead.remove(seq)
            self.last_seq = seq
        else:
            ahead.add(seq)
        position = self.last_seq
        if position == change.seq:
            return change
        return Change(change.seq, change.changed, position)

    def _fan_out(self, change: Change) -> None:
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

    async def fill_gap(self, log: ChangeLog) -> int:
        """Re-read ``log`` after the watermark and fan out what the bus never brought.

        For the bus's owner, when a gap stays open (a lost wake-up): each missing
        change goes through the normal path, so nothing is delivered twice; holes in
        the sequence below the highest logged seq are stepped over. Returns the new
        watermark.
        """
        await self._wait_started()
        entries = await log.changes_after(self.last_seq)
        for seq, changed in entries:
            if seq > self.last_seq + 1:
                self._advance_to(seq - 1)  # what the log lacks below seq is a hole
            if seq > self.last_seq and seq not in self._ahead:
                self._receive(Change(seq, changed))
        return self.last_seq

    def _advance_to(self, upto: int) -> None:
        """Move the watermark to ``upto``: every seq up to it was received, is a hole in
        the log, or (at start) is durable already and read by catch-ups."""
        if upto <= self.last_seq:
            return
        ahead = self._ahead
        ahead.difference_update([s for s in ahead if s <= upto])
        while upto + 1 in ahead:
            upto += 1
            ahead.remove(upto)
        self.last_seq = upto

    async def catch_up(
        self, token: str | None, account_ids: Collection[str], owner: str
    ) -> tuple[dict[str, dict[str, str]], str, bool]:
        """What changed for ``account_ids`` since ``owner``'s ``token``.

        Returns ``(states, token_now, known)``. A token ``owner`` cannot open (another
        user's, forged, from another store or epoch, old-format) or one from the future
        gives the full current state (``known`` False). The returned token never
        overstates: it is the contiguous watermark taken before the query, so a
        change racing with it (or received above a gap) is delivered again live
        rather than lost (states are idempotent). It is sealed afresh, never shared,
        so asking again and again shows nothing about other accounts' changes.
        """
        await self._wait_started()
        tokens = self.tokens
        seq = tokens.open(owner, token)
        if seq is not None and seq > self.last_seq:
            # Sealed by another node that is ahead (cluster mode): read up to it first,
            # so the client gets a delta rather than a resync.
            await self._bus.reach(seq)
        as_of = self.last_seq
        now_token = tokens.seal(owner, as_of)
        if seq is not None and seq > as_of:
            seq = None  # a position this node has not reached (or this store never did)
        if seq is None:
            return await self._store.current_states(account_ids), now_token, False
        if seq >= as_of:
            return {}, now_token, True
        return await self._store.changes_since(seq, account_ids), now_token, True
