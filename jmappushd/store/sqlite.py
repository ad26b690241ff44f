"""The embedded default store: one SQLite file, reached through one SQL thread.

The ordering guarantees of :mod:`jmappushd.store.interface` rest on one rule,
kept by :class:`~jmappushd.store.sqlthread.SQLThread`: all SQL runs on **one** thread
with **one** connection. That thread takes work first in, first out, and hands each
result back to the reactor in the same order, so calls complete in call order
and every call sees all calls made before it. Answers that need no SQL (an
argument error, an empty batch) go through the same thread, so they keep their
turn too. SQLite admits one writer at a time anyway.

The daemon and ``jmappushctl`` may use the file at the same time. Writes begin
with ``BEGIN IMMEDIATE`` (the write lock is taken up front, waiting up to the busy
timeout, instead of failing when a read transaction tries to upgrade), reads see a
WAL snapshot and are never blocked, and every transaction is short.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jmappushd.store import pushops
from jmappushd.store import sqlops as ops
from jmappushd.store.interface import IStore, StateMap
from jmappushd.store.ratewindow import CreationWindows
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
from jmappushd.store.schema import SYNCHRONOUS_MODES, Cursor, configure_connection, migrate
from jmappushd.store.sqlthread import SQLThread

P = ParamSpec("P")
T = TypeVar("T")

FOLD_STATES = 4096
"""Fold the change log into ``states`` once this many account states were logged since
the last fold (study 13). A bigger log makes each fold write fewer pages per change and
each catch-up read scan more; this bounds a read's scan to a few thousand states."""

FOLD_PUBLISHES = 512
"""... or once this many publishes were logged, whatever their size: a catch-up read
parses each logged publish."""


# -- helpers run on the SQL thread outside any transaction --


def _prepare_path(path: str) -> None:
    """Create the parent directory and an empty 0600 file before SQLite opens it.

    The file holds password hashes and token digests. SQLite gives the -wal and
    -shm files the database file's permissions, so they are 0600 too.
    """
    if path == ":memory:":
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # independent of the umask
    finally:
        os.close(fd)


@implementer(IStore)
class SQLiteStore:
    """IStore on one SQLite file (or ``":memory:"`` for throwaway use).

    ``reactor`` must provide IReactorCore and IReactorFromThreads (any real
    reactor does); ``clock`` stamps ``created`` times and defaults to the reactor.
    ``synchronous`` is ``NORMAL`` (durable against process crashes) or ``FULL``
    (also against power loss); see ``schema.configure_connection``. ``fold_states``
    and ``fold_publishes`` say how much of the change log waits for a fold
    (:data:`FOLD_STATES`, :data:`FOLD_PUBLISHES`).
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: IReactorCore,
        *,
        clock: IReactorTime | None = None,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
        fold_states: int = FOLD_STATES,
        fold_publishes: int = FOLD_PUBLISHES,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
        self.path = path
        self._reactor = reactor
        self._threads = IReactorFromThreads(reactor)
        self._clock = clock if clock is not None else IReactorTime(reactor)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._fold_states = fold_states
        self._fold_publishes = fold_publishes
        self._sql: SQLThread | None = None
        # Touched only on the one SQL thread, inside the creating transaction.
        self._creations = CreationWindows()
        # What this store logged since its last fold was queued (reactor thread only).
        self._logged_states = 0
        self._logged_publishes = 0

    # -- lifecycle --

    def open(self) -> Deferred[None]:
        if self._sql is not None:
            return fail(RuntimeError("store is already open"))
        self._sql = SQLThread(self._threads, self._connect, "jmappushd-sqlite")
        self._sql.start()
        return Deferred.fromCoroutine(self._open(self._sql))

    async def _open(self, sql: SQLThread) -> None:
        try:
            await sql.call(_prepare_path, self.path)
            found, version = await self._run(ops.BEGIN_WRITE, migrate)
            # What a process that stopped without closing left in the log.
            await self._run(ops.BEGIN_WRITE, ops.fold)
        except BaseException:
            await self.close()
            raise
        self.log.info(
            "Opened store {path} (schema version {found} -> {version})",
            path=self.path,
            found=found,
            version=version,
        )

    def _connect(self) -> sqlite3.Connection:
        """The SQL thread's connection, made there on first use."""
        connection = sqlite3.connect(
            self.path,
            check_same_thread=False,  # made on the SQL thread, closed there too
            isolation_level=None,  # we issue BEGIN ourselves
            timeout=self._busy_timeout_ms / 1000,
        )
        try:
            mode = configure_connection(connection, self._synchronous, self._busy_timeout_ms)
        except BaseException:
            connection.close()
            raise
        if mode.lower() != "wal" and self.path != ":memory:":
            self.log.warn("SQLite journal mode is {mode}, not WAL", mode=mode)
        return connection

    def close(self) -> Deferred[None]:
        sql, self._sql = self._sql, None
        if sql is None:
            return succeed(None)
        # Queued calls run first: the thread is FIFO. The file is left with an empty
        # log; a fold that fails loses nothing (readers overlay the log, the next open
        # folds it). Closing the connection checkpoints the WAL, on the SQL thread.
        sql.transaction(ops.BEGIN_WRITE, ops.fold).addErrback(self._fold_failed)
        return sql.stop()

    def _run(
        self,
        begin: str,
        body: Callable[Concatenate[Cursor, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """Run ``body`` in one transaction on the SQL thread."""
        if self._sql is None:
            return fail(StoreClosed("the store is not open"))
        return self._sql.transaction(begin, body, *args, **kwargs)

    def _alone(
        self,
        body: Callable[Concatenate[Cursor, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """Run ``body``, one statement, outside a transaction on the SQL thread."""
        if self._sql is None:
            return fail(StoreClosed("the store is not open"))
        return self._sql.statement(body, *args, **kwargs)

    def _in_turn(self, answer: Callable[[], T]) -> Deferred[T]:
        """Answer without SQL but in call order: through the same FIFO thread."""
        if self._sql is None:
            return fail(StoreClosed("the store is not open"))
        return self._sql.call(answer)

    def _refuse(self, error: Exception) -> Deferred[T]:
        """Fail a call with a bad argument in its turn, not ahead of earlier calls."""

        def refuse() -> T:
            raise error

        return self._in_turn(refuse)

    # -- users and accounts --

    def add_user(
        self, name: str, password_hash: str, account_id: str | None = None
    ) -> Deferred[User]:
        user = User(
            id=new_id("u"),
            name=name,
            password_hash=password_hash,
            primary_account_id=account_id if account_id is not None else new_id("a"),
            created=self._clock.seconds(),
        )
        return self._run(ops.BEGIN_WRITE, ops.add_user, user)

    def get_user(self, name: str) -> Deferred[User | None]:
        return self._run(ops.BEGIN_READ, ops.get_user, False, name)

    def get_user_by_id(self, user_id: str) -> Deferred[User | None]:
        return self._run(ops.BEGIN_READ, ops.get_user, True, user_id)

    def list_users(self) -> Deferred[list[User]]:
        return self._run(ops.BEGIN_READ, ops.list_users)

    def remove_user(self, name: str) -> Deferred[bool]:
        return self._run(ops.BEGIN_WRITE, ops.remove_user, name)

    def set_password(self, name: str, password_hash: str) -> Deferred[None]:
        return self._run(ops.BEGIN_WRITE, ops.set_password, name, password_hash)

    def grant(self, name: str, account_id: str) -> Deferred[None]:
        return self._run(ops.BEGIN_WRITE, ops.grant, name, account_id)

    def revoke_grant(self, name: str, account_id: str) -> Deferred[bool]:
        return self._run(ops.BEGIN_WRITE, ops.revoke_grant, name, account_id)

    def accounts_for_user(self, user_id: str) -> Deferred[list[Account]]:
        return self._run(ops.BEGIN_READ, ops.accounts_for_user, user_id)

    # -- bearer tokens --

    def create_token(self, name: str, digest: bytes, label: str = "") -> Deferred[TokenRecord]:
        try:
            digest = check_digest(digest)
        except ValueError as error:
            return self._refuse(error)
        record = TokenRecord(new_id("t"), "", self._clock.seconds(), label)
        return self._run(ops.BEGIN_WRITE, ops.create_token, name, record, digest)

    def find_token(self, digest: bytes) -> Deferred[tuple[TokenRecord, User] | None]:
        return self._run(ops.BEGIN_READ, ops.find_token, bytes(digest))

    def list_tokens(self, name: str) -> Deferred[list[TokenRecord]]:
        return self._run(ops.BEGIN_READ, ops.list_tokens, name)

    def revoke_token(self, token_id: str) -> Deferred[bool]:
        return self._run(ops.BEGIN_WRITE, ops.revoke_token, token_id)

    def auth_generation(self) -> Deferred[int]:
        return self._run(ops.BEGIN_READ, ops.auth_generation)

    # -- states and the change sequence --

    def position(self) -> Deferred[tuple[str, int]]:
        return self._run(ops.BEGIN_READ, ops.position)

    def record_changes(self, changed: StateMap) -> Deferred[int]:
        recorded = self.record_changes_batch([changed])
        return recorded.addCallback(lambda seqs: seqs[0])

    def record_changes_batch(self, batch: Sequence[StateMap]) -> Deferred[list[int]]:
        try:
            encoded = [publish_json(changed) for changed in batch]
        except (TypeError, ValueError) as error:
            return self._refuse(error)
        if not encoded:
            return self._in_turn(list)
        recorded = self._alone(ops.record_batch, [t for t, _ in encoded])
        self._logged_publishes += len(encoded)
        self._logged_states += sum(n for _, n in encoded)
        if (self._logged_states >= self._fold_states
                or self._logged_publishes >= self._fold_publishes):
            self._fold()
        return recorded

    def _fold(self) -> None:
        """Queue a fold behind the publish that filled the log: that publish is
        answered first, calls made after it wait for the fold (the thread is FIFO)."""
        self._logged_states = self._logged_publishes = 0
        self._run(ops.BEGIN_WRITE, ops.fold).addErrback(self._fold_failed)

    def _fold_failed(self, failure: Failure) -> None:
        # Nothing is lost: the log stays and readers overlay it; the next fold retries.
        self.log.failure("Folding the change log into states failed", failure)

    def changes_since(
        self, seq: int, account_ids: Collection[str]
    ) -> Deferred[dict[str, dict[str, str]]]:
        return self._states(list(account_ids), int(seq))

    def current_states(self, account_ids: Collection[str]) -> Deferred[dict[str, dict[str, str]]]:
        return self._states(list(account_ids), None)

    def _states(
        self, account_ids: list[str], after: int | None
    ) -> Deferred[dict[str, dict[str, str]]]:
        if not account_ids:
            return self._in_turn(dict)
        # One read transaction, so all chunks see the same snapshot.
        return self._run(ops.BEGIN_READ, ops.states, sorted(set(account_ids)), after)

    # -- metadata --

    def get_meta(self, key: str) -> Deferred[str | None]:
        return self._run(ops.BEGIN_READ, ops.get_meta, key)

    def set_meta(self, key: str, value: str) -> Deferred[None]:
        return self._run(ops.BEGIN_WRITE, ops.set_meta, key, value)

    def add_meta(self, key: str, value: str) -> Deferred[str]:
        return self._run(ops.BEGIN_WRITE, ops.add_meta, key, value)

    # -- push subscriptions --

    def create_push_subscription(
        self, subscription: PushSubscription, max_per_user: int,
        rate: CreationRate | None = None
    ) -> Deferred[PushSubscription]:
        return self._run(ops.BEGIN_WRITE, self._create_counted, subscription, max_per_user,
                         rate)

    def _create_counted(self, cursor: Cursor, sub: PushSubscription, max_per_user: int,
                        rate: CreationRate | None) -> PushSubscription:
        """One daemon creates on a SQLite file, so the rate window is this object's."""
        if rate is not None:
            self._creations.check(sub.user_id, sub.created, rate)
        pushops.create(cursor, sub, max_per_user)
        if rate is not None:
            self._creations.count(sub.user_id, sub.created, rate)
        return sub

    def push_subscriptions_for(self, credential_id: str) -> Deferred[list[PushSubscription]]:
        return self._run(ops.BEGIN_READ, pushops.by_credential, credential_id)

    def all_push_subscriptions(self) -> Deferred[list[PushSubscription]]:
        return self._run(ops.BEGIN_READ, pushops.all_subscriptions)

    def push_subscription_ids(self) -> Deferred[set[str]]:
        return self._run(ops.BEGIN_READ, pushops.ids)

    def update_push_subscription(
        self, sub_id: str, changes: Mapping[str, object]
    ) -> Deferred[bool]:
        try:
            check_updatable(changes)
        except ValueError as error:
            return self._refuse(error)
        return self._run(ops.BEGIN_WRITE, pushops.update, sub_id, dict(changes))

    def save_push_delivery(self, sub_id: str, delivery: PushDelivery) -> Deferred[bool]:
        return self._run(ops.BEGIN_WRITE, pushops.save_delivery, sub_id, delivery)

    def delete_push_subscription(self, sub_id: str) -> Deferred[bool]:
        return self._run(ops.BEGIN_WRITE, pushops.delete, sub_id)

    def delete_push_subscriptions_except_keys(self, key_ids: Collection[str]
                                              ) -> Deferred[list[str]]:
        try:
            kept = check_kept_keys(key_ids)
        except ValueError as error:
            return self._refuse(error)
        return self._run(ops.BEGIN_WRITE, pushops.delete_other_keys, kept)
