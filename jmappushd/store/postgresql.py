"""The PostgreSQL store: every store interface on one database, shared by many daemons.

SQL runs on a thread pool of ``pool_size`` threads, each call on a pooled
connection (psycopg 3, blocking, off the reactor); :class:`~jmappushd.store.pgorder.CallOrder`
keeps the interface's ordering guarantees for this store object while reads run
side by side. Across store objects (other nodes, ``jmappushctl``) the database
does the ordering: every publish updates the one ``change_seq`` row, so seqs
follow commit order and a reader that saw seq N has seen every seq below it.

A publish appends to the log only; each pair's newest state is folded into
``states`` afterwards (:mod:`jmappushd.store.pgtail`): a fold every
``fold_interval`` seconds while anything is unfolded (no timer when idle), at once
when ``fold_at`` changes wait, and at close. A catch-up reads ``states`` with the
fold mark and lays the unfolded tail over it.

Connections, and what a failed one means, are :mod:`jmappushd.store.pgpool`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from jmappushd.store import pgleases as leases
from jmappushd.store import pgops as ops
from jmappushd.store import pgpushops as pushops
from jmappushd.store.interface import IStore, StateMap
from jmappushd.store.pgconnect import PgConnector
from jmappushd.store.pgorder import CallOrder
from jmappushd.store.pgpool import Connections, first_open
from jmappushd.store.pgtail import UnfoldedTail
from jmappushd.store.records import (
    Account,
    CreationRate,
    PushDelivery,
    PushSubscription,
    StoreClosed,
    TokenRecord,
    User,
)
from jmappushd.store.rules import (
    check_digest,
    check_kept_keys,
    check_updatable,
    new_id,
    publish_json,
)

P = ParamSpec("P")
T = TypeVar("T")

BEGIN_WRITE = b"BEGIN ISOLATION LEVEL READ COMMITTED"
BEGIN_READ = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"  # one snapshot per call
# changes_after answers at most this many entries; the hub asks again from the last.
CHANGES_AFTER_LIMIT = 10_000
# Seconds between folds while changes wait, and how many waiting changes fold at once.
# A pair changed many times within a round costs ``states`` one row write.
FOLD_INTERVAL = 1.0
FOLD_AT = 100_000


@implementer(IStore)
class PostgreSQLStore:
    """IStore on one PostgreSQL database (its ``search_path`` schema).

    ``reactor`` provides IReactorCore and IReactorFromThreads; ``clock`` stamps
    ``created`` times and defaults to the reactor. ``pool_size`` bounds both the
    threads and the connections of this store object.
    """

    log = Logger()

    def __init__(self, connector: PgConnector, reactor: IReactorCore, *, pool_size: int = 8,
                 clock: IReactorTime | None = None, fold_interval: float = FOLD_INTERVAL,
                 fold_at: int = FOLD_AT) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.connector = connector
        self._reactor = reactor
        self._threads = IReactorFromThreads(reactor)
        self._clock = clock if clock is not None else IReactorTime(reactor)
        self._pool_size = pool_size
        self._pool: ThreadPool | None = None
        self._order: CallOrder | None = None
        self._connections = Connections(connector)
        self._opening = False
        self._tail = UnfoldedTail()
        self._fold_interval = fold_interval
        self._fold_at = fold_at
        self._fold_call: IDelayedCall | None = None
        self._folding: Deferred[int] | None = None
        self._fold_failing = False
        self._recording = 0  # publishes called and not yet answered

    # -- lifecycle --

    def open(self) -> Deferred[None]:
        if self._pool is not None or self._opening:
            return fail(RuntimeError("store is already open"))
        self._opening = True
        pool = ThreadPool(minthreads=0, maxthreads=self._pool_size, name="jmappushd-pg")
        pool.start()
        return Deferred.fromCoroutine(self._open(pool))

    async def _open(self, pool: ThreadPool) -> None:
        try:
            found, version = await deferToThreadPool(
                self._threads, pool, first_open, self._connections, self.connector)
        except BaseException:
            pool.stop()
            raise
        finally:
            self._opening = False
        self._pool = pool
        threads = self._threads

        def run_on_pool(work: Callable[[], T]) -> Deferred[T]:
            # Bound to this pool: calls queued before close() still run on it.
            return deferToThreadPool(threads, pool, work)

        self._order = CallOrder(run_on_pool, self._pool_size)
        folded, top, entries = await self._read(ops.unfolded)
        self._tail = UnfoldedTail(folded)
        self._tail.add_read(folded, entries, upto=top)
        self._fold_later()
        self.log.info("Opened store {name} (schema version {found} -> {version}, "
                      "{size} connections at most)", name=self.connector.name,
                      found=found, version=version, size=self._pool_size)

    def close(self) -> Deferred[None]:
        if self._fold_call is not None:
            self._fold_call.cancel()
            self._fold_call = None
        # What this object published is folded before it goes (jmappushctl's publishes
        # too); if that fails, the next fold of any node folds it from the log.
        last_fold = self._fold_now() if len(self._tail) else None
        order, pool = self._order, self._pool
        self._order = self._pool = None
        if order is None or pool is None:
            return succeed(None)
        return Deferred.fromCoroutine(self._close(order, pool, last_fold))

    async def _close(self, order: CallOrder, pool: ThreadPool,
                     last_fold: Deferred[int] | None) -> None:
        if last_fold is not None:
            await last_fold  # never fails: _fold_now logs a failure
        await order.drained()  # queued calls still run and fire in order
        try:
            await deferToThreadPool(self._threads, pool, self._connections.close_all)
        finally:
            pool.stop()

    def _read(self, body: Callable[Concatenate[ops.Cursor, P], T], *args: P.args,
              **kwargs: P.kwargs) -> Deferred[T]:
        if self._order is None:
            return fail(StoreClosed("the store is not open"))
        connections = self._connections
        return self._order.read(lambda: connections.transact(BEGIN_READ, body, *args, **kwargs))

    def _write(self, body: Callable[Concatenate[ops.Cursor, P], T], *args: P.args,
               **kwargs: P.kwargs) -> Deferred[T]:
        if self._order is None:
            return fail(StoreClosed("the store is not open"))
        connections = self._connections
        return self._order.write(lambda: connections.transact(BEGIN_WRITE, body, *args, **kwargs))

    def _write_single(self, body: Callable[Concatenate[ops.Cursor, P], T], *args: P.args,
                      **kwargs: P.kwargs) -> Deferred[T]:
        """A write that is one statement: its own transaction (see Connections.single)."""
        if self._order is None:
            return fail(StoreClosed("the store is not open"))
        connections = self._connections
        return self._order.write(lambda: connections.single(body, *args, **kwargs))

    def _read_single(self, body: Callable[Concatenate[ops.Cursor, P], T], *args: P.args,
                     **kwargs: P.kwargs) -> Deferred[T]:
        """A read that is one statement: one snapshot without a transaction around it."""
        if self._order is None:
            return fail(StoreClosed("the store is not open"))
        connections = self._connections
        return self._order.read(lambda: connections.single(body, *args, **kwargs))

    def _in_turn(self, answer: Callable[[], T]) -> Deferred[T]:
        """Answer without SQL, but in call order."""
        if self._order is None:
            return fail(StoreClosed("the store is not open"))
        return self._order.answer(answer)

    def _refuse(self, error: Exception) -> Deferred[T]:
        def refuse() -> T:
            raise error

        return self._in_turn(refuse)

    # -- users and accounts --

    def add_user(self, name: str, password_hash: str, account_id: str | None = None
                 ) -> Deferred[User]:
        user = User(id=new_id("u"), name=name, password_hash=password_hash,
                    primary_account_id=account_id if account_id is not None else new_id("a"),
                    created=self._clock.seconds())
        return self._write(ops.add_user, user)

    def get_user(self, name: str) -> Deferred[User | None]:
        return self._read(ops.get_user, False, name)

    def get_user_by_id(self, user_id: str) -> Deferred[User | None]:
        return self._read(ops.get_user, True, user_id)

    def list_users(self) -> Deferred[list[User]]:
        return self._read(ops.list_users)

    def remove_user(self, name: str) -> Deferred[bool]:
        return self._write(ops.remove_user, name)

    def set_password(self, name: str, password_hash: str) -> Deferred[None]:
        return self._write(ops.set_password, name, password_hash)

    def grant(self, name: str, account_id: str) -> Deferred[None]:
        return self._write(ops.grant, name, account_id)

    def revoke_grant(self, name: str, account_id: str) -> Deferred[bool]:
        return self._write(ops.revoke_grant, name, account_id)

    def accounts_for_user(self, user_id: str) -> Deferred[list[Account]]:
        return self._read(ops.accounts_for_user, user_id)

    # -- bearer tokens --

    def create_token(self, name: str, digest: bytes, label: str = "") -> Deferred[TokenRecord]:
        try:
            digest = check_digest(digest)
        except ValueError as error:
            return self._refuse(error)
        record = TokenRecord(new_id("t"), "", self._clock.seconds(), label)
        return self._write(ops.create_token, name, record, digest)

    def find_token(self, digest: bytes) -> Deferred[tuple[TokenRecord, User] | None]:
        return self._read(ops.find_token, bytes(digest))

    def list_tokens(self, name: str) -> Deferred[list[TokenRecord]]:
        return self._read(ops.list_tokens, name)

    def revoke_token(self, token_id: str) -> Deferred[bool]:
        return self._write(ops.revoke_token, token_id)

    def auth_generation(self) -> Deferred[int]:
        return self._read(ops.auth_generation)

    # -- states and the change log --

    def position(self) -> Deferred[tuple[str, int]]:
        return self._read(ops.position)

    def record_changes(self, changed: StateMap) -> Deferred[int]:
        recorded = self.record_changes_batch([changed])
        return recorded.addCallback(lambda seqs: seqs[0])

    def record_changes_batch(self, batch: Sequence[StateMap]) -> Deferred[list[int]]:
        try:
            published = [publish_json(changed) for changed in batch]
        except (TypeError, ValueError) as error:
            return self._refuse(error)
        if not published:
            return self._in_turn(list)
        texts = [text for text, _ in published]
        recorded: Deferred[list[int]] = self._write_single(ops.record_batch, texts)
        self._recording += 1

        def held(seqs: list[int]) -> list[int]:
            self._recording -= 1
            tail = self._tail
            for seq, (text, count) in zip(seqs, published, strict=True):
                tail.add_text(seq, text, count)
            self._fold_later()
            return seqs

        def failed(failure: Failure) -> Failure:
            self._recording -= 1
            return failure

        return recorded.addCallbacks(held, failed)

    def settled(self) -> Deferred[None]:
        """Fires once every publish called so far has been answered (at once if none is
        under way): the cluster bus waits for it before reading after a wake-up, which
        is most often this node's own commit coming back first."""
        if not self._recording:
            return succeed(None)
        return self._in_turn(lambda: None)

    def changes_after(self, seq: int, limit: int = CHANGES_AFTER_LIMIT
                      ) -> Deferred[Sequence[tuple[int, StateMap]]]:
        """The hub's ``ChangeLog``: logged ``(seq, changed)`` after ``seq``, in seq order,
        at most ``limit`` of them, from one snapshot. Seqs are contiguous (a rolled back
        publish takes none), except below the pruned horizon."""
        after = int(seq)
        read: Deferred[list[tuple[int, dict[str, dict[str, str]]]]] = self._read_single(
            ops.changes_after, after, max(1, int(limit)))

        def held(entries: list[tuple[int, dict[str, dict[str, str]]]]
                 ) -> Sequence[tuple[int, StateMap]]:
            self._tail.add_read(after, entries)
            self._fold_later()
            return entries

        return read.addCallback(held)

    def states_changed(self, after: int, upto: int) -> Deferred[dict[str, dict[str, str]]]:
        """Every account's newest states last changed in ``(after, upto]`` (one snapshot):
        the cluster bus's heal for a watermark below the pruned log horizon (the log is
        pruned only below the fold mark, so ``states`` holds all of that range)."""
        return self._read(ops.states_changed, int(after), int(upto))

    def changes_since(self, seq: int, account_ids: Collection[str]
                      ) -> Deferred[dict[str, dict[str, str]]]:
        return self._states(list(account_ids), int(seq))

    def current_states(self, account_ids: Collection[str]) -> Deferred[dict[str, dict[str, str]]]:
        return self._states(list(account_ids), None)

    def _states(self, account_ids: list[str], after: int | None
                ) -> Deferred[dict[str, dict[str, str]]]:
        """Folded states from ``states``, the unfolded tail laid over them.

        The read brings back, from the same snapshot, the log entries this object's
        tail lacks between its high mark and the log's top, so the answer holds every
        change committed before it. Tail entries at or below the snapshot's fold mark
        are not used (``states`` has them or newer); the tail is trimmed only by this
        object's own folds, which are ordered writes: a read called before one is
        answered before the trim, and a read called after one sees its mark.
        """
        if not account_ids:
            return self._in_turn(dict)
        accounts = sorted(set(account_ids))
        since = self._tail.high
        read: Deferred[ops.StatesRead] = self._read(ops.states, accounts, after, since)

        def overlaid(answer: ops.StatesRead) -> dict[str, dict[str, str]]:
            folded, top, states, entries = answer
            tail = self._tail
            tail.add_read(max(since, folded), entries, upto=top)
            tail.overlay(states, accounts, folded if after is None else max(after, folded))
            self._fold_later()
            return states

        return read.addCallback(overlaid)

    # -- folding --

    @property
    def unfolded_changes(self) -> int:
        """Changes this object holds that ``states`` may not (health and tests)."""
        return self._tail.changes

    def fold(self) -> Deferred[int]:
        """Fold what this object holds into ``states`` now; fires with the fold mark.

        Folds run by themselves; this is for tests and for a caller that wants
        ``states`` current (``jmappushctl`` folds at close).
        """
        if self._order is None:
            return fail(StoreClosed("the store is not open"))
        return Deferred.fromCoroutine(self._fold())

    async def _fold(self) -> int:
        tail = self._tail
        if tail.newest_seq > tail.high:
            # Entries of this node's own publishes wait above a gap the bus has not
            # read yet: read it, so the fold need not wait for the bus.
            await self.changes_after(tail.high)  # which adds what it reads to the tail
        rows = tail.fold_rows()
        if rows.upto <= rows.base:
            return tail.folded
        folded: int = await self._write(ops.fold, rows)
        tail.advance_folded(folded)
        return folded

    def _fold_later(self) -> None:
        """Schedule the next fold while changes wait (at once past ``fold_at``)."""
        if self._order is None or self._folding is not None or not len(self._tail):
            return
        delay = 0.0 if self._tail.changes >= self._fold_at else self._fold_interval
        if self._fold_call is not None:
            if delay > 0 or not self._fold_call.active():
                return
            self._fold_call.cancel()
        self._fold_call = self._clock.callLater(delay, self._fold_tick)

    def _fold_tick(self) -> None:
        self._fold_call = None
        self._fold_now()

    def _fold_now(self) -> Deferred[int]:
        """One fold; a failure is logged (once per outage) and the next tick retries."""
        folding = self._folding = self.fold()

        def done(result: object) -> object:
            self._folding = None
            if isinstance(result, Failure):
                if not self._fold_failing:
                    self._fold_failing = True
                    self.log.warn("Folding the change log into states failed, will retry "
                                  "(catch-ups still see every change): {error}",
                                  error=result.getErrorMessage())
                result = self._tail.folded
            elif self._fold_failing:
                self._fold_failing = False
                self.log.info("Folding the change log into states works again")
            self._fold_later()
            return result

        folding.addBoth(done)
        return folding

    # -- metadata --

    def get_meta(self, key: str) -> Deferred[str | None]:
        return self._read(ops.get_meta, key)

    def set_meta(self, key: str, value: str) -> Deferred[None]:
        return self._write(ops.set_meta, key, value)

    def add_meta(self, key: str, value: str) -> Deferred[str]:
        return self._write(ops.add_meta, key, value)

    # -- push subscriptions --

    def create_push_subscription(self, subscription: PushSubscription, max_per_user: int,
                                 rate: CreationRate | None = None
                                 ) -> Deferred[PushSubscription]:
        return self._write(pushops.create, subscription, max_per_user, rate)

    def push_subscriptions_for(self, credential_id: str) -> Deferred[list[PushSubscription]]:
        return self._read(pushops.by_credential, credential_id)

    def all_push_subscriptions(self) -> Deferred[list[PushSubscription]]:
        return self._read(pushops.all_subscriptions)

    def push_subscription_ids(self) -> Deferred[set[str]]:
        return self._read(pushops.ids)

    def update_push_subscription(self, sub_id: str, changes: Mapping[str, object]
                                 ) -> Deferred[bool]:
        try:
            check_updatable(changes)
        except ValueError as error:
            return self._refuse(error)
        return self._write(pushops.update, sub_id, dict(changes))

    def save_push_delivery(self, sub_id: str, delivery: PushDelivery) -> Deferred[bool]:
        return self._write(pushops.save_delivery, sub_id, delivery)

    def delete_push_subscription(self, sub_id: str) -> Deferred[bool]:
        return self._write(pushops.delete, sub_id)

    def delete_push_subscriptions_except_keys(self, key_ids: Collection[str]
                                              ) -> Deferred[list[str]]:
        try:
            kept = check_kept_keys(key_ids)
        except ValueError as error:
            return self._refuse(error)
        return self._write(pushops.delete_other_keys, kept)

    # -- push delivery leases (cluster mode; see pgleases) --

    def renew_leases(self, node: str, lease_time: float) -> Deferred[leases.Renewal]:
        """Heartbeat, renew, and take expired buckets up to this node's fair share."""
        return self._write(leases.renew, node, lease_time)

    def release_leases(self, node: str, buckets: Collection[int]) -> Deferred[int]:
        return self._write(leases.release, node, sorted(buckets))

    def leave_cluster(self, node: str) -> Deferred[None]:
        return self._write(leases.leave, node)

    def push_subscriptions_in(self, buckets: Collection[int]
                              ) -> Deferred[list[PushSubscription]]:
        return self._read(leases.subscriptions_in, sorted(buckets))

    def get_push_subscription(self, sub_id: str) -> Deferred[PushSubscription | None]:
        return self._read(leases.subscription, sub_id)

    def save_push_delivery_fenced(self, node: str, sub_id: str, delivery: PushDelivery,
                                  margin: float) -> Deferred[leases.Fenced]:
        """Record an attempt only while ``node`` still holds its bucket (the fence)."""
        return self._write(leases.save_delivery_fenced, node, sub_id, delivery, margin)
