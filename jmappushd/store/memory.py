"""An in-process store: every interface of :mod:`jmappushd.store.interface` on dicts.

It keeps the SQLite store's rules (errors, cascades, auth generation, seqs) but
nothing survives ``close``. Each call does its work at once, so it sees every
earlier call; its Deferred fires at once too, unless a test has called
:meth:`MemoryStore.hold`, in which case answers wait and fire in call order on
:meth:`MemoryStore.release` — the same ordering guarantees, with the gap between
"called" and "fired" under the test's control.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from jmappushd.store.interface import IStore, StateMap
from jmappushd.store.memorydata import MemoryData
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
    flatten,
    new_id,
)

T = TypeVar("T")


@implementer(IStore)
class MemoryStore:
    """IStore on plain dicts; ``clock`` stamps ``created`` times (None: always 0).

    ``make_id`` (prefix -> id) lets a test choose user and token ids.
    """

    def __init__(self, clock: IReactorTime | None = None, *,
                 make_id: Callable[[str], str] = new_id) -> None:
        self._clock = clock
        self._data = MemoryData("e" + secrets.token_hex(8), make_id)
        self._open = False
        self._held: list[Callable[[], None]] | None = None
        self._next_failure: Exception | None = None

    # -- test hooks --

    def hold(self) -> None:
        """Keep answers back (work is still done at call time) until :meth:`release`."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Fire every held answer, in call order, and answer at once again."""
        held, self._held = self._held or [], None
        for answer in held:
            answer()

    def fail_next(self, error: Exception) -> None:
        """Make the next call fail with ``error`` without doing its work."""
        self._next_failure = error

    # -- plumbing --

    def _call(self, work: Callable[[], T]) -> Deferred[T]:
        """Do ``work`` now; answer now or, while held, in turn."""
        d: Deferred[T] = Deferred()
        answer = self._settle(work, d)
        if self._held is not None:
            self._held.append(answer)
        else:
            answer()
        return d

    def _settle(self, work: Callable[[], T], d: Deferred[T]) -> Callable[[], None]:
        """Run ``work`` (unless closed or told to fail) and return what fires ``d``."""
        if not self._open:
            failure = Failure(StoreClosed("the store is not open"))
        elif self._next_failure is not None:
            failure, self._next_failure = Failure(self._next_failure), None
        else:
            try:
                value = work()
            except Exception:
                failure = Failure()
            else:
                return lambda: d.callback(value)
        return lambda: d.errback(failure)

    def _now(self) -> float:
        return 0.0 if self._clock is None else self._clock.seconds()

    # -- lifecycle --

    def open(self) -> Deferred[None]:
        if self._open:
            return self._call(self._already_open)
        self._open = True
        return self._call(lambda: None)

    @staticmethod
    def _already_open() -> None:
        raise RuntimeError("store is already open")

    def close(self) -> Deferred[None]:
        if not self._open:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        closed = self._call(lambda: None)
        self._open = False
        return closed

    # -- users, tokens, grants --

    def add_user(
        self, name: str, password_hash: str, account_id: str | None = None
    ) -> Deferred[User]:
        return self._call(lambda: self._data.add_user(name, password_hash, account_id,
                                                      self._now()))

    def get_user(self, name: str) -> Deferred[User | None]:
        return self._call(lambda: self._data.users.get(name))

    def get_user_by_id(self, user_id: str) -> Deferred[User | None]:
        return self._call(lambda: self._data.user_by_id(user_id))

    def list_users(self) -> Deferred[list[User]]:
        return self._call(lambda: sorted(self._data.users.values(), key=lambda u: u.name))

    def remove_user(self, name: str) -> Deferred[bool]:
        return self._call(lambda: self._data.remove_user(name))

    def set_password(self, name: str, password_hash: str) -> Deferred[None]:
        return self._call(lambda: self._data.set_password(name, password_hash))

    def grant(self, name: str, account_id: str) -> Deferred[None]:
        return self._call(lambda: self._data.grant(name, account_id))

    def revoke_grant(self, name: str, account_id: str) -> Deferred[bool]:
        return self._call(lambda: self._data.revoke_grant(name, account_id))

    def accounts_for_user(self, user_id: str) -> Deferred[list[Account]]:
        return self._call(lambda: self._data.accounts_for_user(user_id))

    def create_token(self, name: str, digest: bytes, label: str = "") -> Deferred[TokenRecord]:
        return self._call(lambda: self._data.create_token(name, check_digest(digest), label,
                                                          self._now()))

    def find_token(self, digest: bytes) -> Deferred[tuple[TokenRecord, User] | None]:
        return self._call(lambda: self._data.find_token(bytes(digest)))

    def list_tokens(self, name: str) -> Deferred[list[TokenRecord]]:
        return self._call(lambda: self._data.list_tokens(name))

    def revoke_token(self, token_id: str) -> Deferred[bool]:
        return self._call(lambda: self._data.revoke_token(token_id))

    def auth_generation(self) -> Deferred[int]:
        return self._call(lambda: self._data.auth_generation)

    # -- states and the change sequence --

    def position(self) -> Deferred[tuple[str, int]]:
        return self._call(lambda: (self._data.epoch, self._data.seq))

    def record_changes(self, changed: StateMap) -> Deferred[int]:
        return self.record_changes_batch([changed]).addCallback(lambda seqs: seqs[0])

    def record_changes_batch(self, batch: Sequence[StateMap]) -> Deferred[list[int]]:
        return self._call(lambda: self._data.record([flatten(c) for c in batch]))

    def changes_since(
        self, seq: int, account_ids: Collection[str]
    ) -> Deferred[dict[str, dict[str, str]]]:
        return self._call(lambda: self._data.states(set(account_ids), int(seq)))

    def current_states(self, account_ids: Collection[str]) -> Deferred[dict[str, dict[str, str]]]:
        return self._call(lambda: self._data.states(set(account_ids), None))

    # -- metadata --

    def get_meta(self, key: str) -> Deferred[str | None]:
        return self._call(lambda: self._data.meta.get(key))

    def set_meta(self, key: str, value: str) -> Deferred[None]:
        return self._call(lambda: self._data.meta.__setitem__(key, value))

    def add_meta(self, key: str, value: str) -> Deferred[str]:
        return self._call(lambda: self._data.meta.setdefault(key, value))

    # -- push subscriptions --

    def create_push_subscription(
        self, subscription: PushSubscription, max_per_user: int,
        rate: CreationRate | None = None
    ) -> Deferred[PushSubscription]:
        return self._call(lambda: self._data.add_subscription(subscription, max_per_user, rate))

    def push_subscriptions_for(self, credential_id: str) -> Deferred[list[PushSubscription]]:
        return self._call(lambda: [s for s in self._data.subscriptions()
                                   if s.credential_id == credential_id])

    def all_push_subscriptions(self) -> Deferred[list[PushSubscription]]:
        return self._call(self._data.subscriptions)

    def push_subscription_ids(self) -> Deferred[set[str]]:
        return self._call(lambda: set(self._data.subs))

    def update_push_subscription(
        self, sub_id: str, changes: Mapping[str, object]
    ) -> Deferred[bool]:
        def update() -> bool:
            check_updatable(changes)
            return self._data.update_subscription(sub_id, dict(changes))

        return self._call(update)

    def save_push_delivery(self, sub_id: str, delivery: PushDelivery) -> Deferred[bool]:
        return self._call(lambda: self._data.save_delivery(sub_id, delivery))

    def delete_push_subscription(self, sub_id: str) -> Deferred[bool]:
        return self._call(lambda: self._data.subs.pop(sub_id, None) is not None)

    def delete_push_subscriptions_except_keys(self, key_ids: Collection[str]
                                              ) -> Deferred[list[str]]:
        return self._call(lambda: self._data.delete_other_keys(check_kept_keys(key_ids)))
