"""The in-memory store's data and rules, kept apart from its Deferred plumbing.

The rules mirror :mod:`jmappushd.store.sqlops` and :mod:`jmappushd.store.pushops`
(and the schema's foreign keys and unique columns), so the conformance suite can
hold both backends to the same answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jmappushd.store.ratewindow import CreationWindows
from jmappushd.store.records import (
    Account,
    AccountInUse,
    CreationRate,
    NoSuchUser,
    PushDelivery,
    PushQuotaExceeded,
    PushSubscription,
    TokenRecord,
    User,
    UserExists,
)
from jmappushd.store.rules import StateRows, new_id


def _copy_states(states: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """Stored pending states must not share dicts with the caller (SQLite copies too)."""
    return {account: dict(types) for account, types in states.items()}


def _copy_delivery(d: PushDelivery) -> PushDelivery:
    return dataclasses.replace(d, pending=_copy_states(d.pending))


class MemoryData:
    """Users (by name), tokens, grants, states, metadata and push subscriptions."""

    def __init__(self, epoch: str, make_id: Callable[[str], str] = new_id) -> None:
        self.epoch = epoch
        self.make_id = make_id
        self.seq = 0
        self.auth_generation = 0
        self.users: dict[str, User] = {}
        self.grants: dict[str, set[str]] = {}  # user id -> granted account ids
        self.tokens: dict[str, tuple[TokenRecord, bytes]] = {}  # token id -> (record, digest)
        self.state_rows: dict[tuple[str, str], tuple[str, int]] = {}  # -> (state, seq)
        self.meta: dict[str, str] = {}
        self.subs: dict[str, PushSubscription] = {}
        self.creations = CreationWindows()

    def _bump(self) -> None:
        self.auth_generation += 1

    def _require(self, name: str) -> User:
        user = self.users.get(name)
        if user is None:
            raise NoSuchUser(name)
        return user

    def user_by_id(self, user_id: str) -> User | None:
        return next((u for u in self.users.values() if u.id == user_id), None)

    # -- users and grants --

    def add_user(self, name: str, password_hash: str, account_id: str | None,
                 now: float) -> User:
        if name in self.users:
            raise UserExists(name)
        account = account_id if account_id is not None else self.make_id("a")
        if any(u.primary_account_id == account for u in self.users.values()):
            raise AccountInUse(account)
        user = User(self.make_id("u"), name, password_hash, account, now)
        self.users[name] = user
        self._bump()
        return user

    def remove_user(self, name: str) -> bool:
        user = self.users.pop(name, None)
        if user is None:
            return False
        self.subs = {k: s for k, s in self.subs.items() if s.user_id != user.id}
        self.tokens = {k: t for k, t in self.tokens.items() if t[0].user_id != user.id}
        self.grants.pop(user.id, None)
        self._bump()
        return True

    def set_password(self, name: str, password_hash: str) -> None:
        self.users[name] = dataclasses.replace(self._require(name), password_hash=password_hash)
        self._bump()

    def grant(self, name: str, account_id: str) -> None:
        user = self._require(name)
        granted = self.grants.setdefault(user.id, set())
        if account_id != user.primary_account_id and account_id not in granted:
            granted.add(account_id)
            self._bump()

    def revoke_grant(self, name: str, account_id: str) -> bool:
        user = self.users.get(name)
        granted = self.grants.get(user.id, set()) if user is not None else set()
        if account_id not in granted:
            return False
        granted.discard(account_id)
        self._bump()
        return True

    def accounts_for_user(self, user_id: str) -> list[Account]:
        user = self.user_by_id(user_id)
        if user is None:
            return []
        granted = sorted(self.grants.get(user_id, set()) - {user.primary_account_id})
        return [Account(user.primary_account_id, user.name, True),
                *(Account(a, a, False) for a in granted)]

    # -- tokens --

    def create_token(self, name: str, digest: bytes, label: str, now: float) -> TokenRecord:
        user = self._require(name)
        if any(stored == digest for _, stored in self.tokens.values()):
            raise ValueError("a token with this digest already exists")
        record = TokenRecord(self.make_id("t"), user.id, now, label)
        self.tokens[record.id] = (record, digest)
        self._bump()
        return record

    def find_token(self, digest: bytes) -> tuple[TokenRecord, User] | None:
        for record, stored in self.tokens.values():
            if stored == digest:
                user = self.user_by_id(record.user_id)
                return None if user is None else (record, user)
        return None

    def list_tokens(self, name: str) -> list[TokenRecord]:
        user = self.users.get(name)
        if user is None:
            return []
        mine = [record for record, _ in self.tokens.values() if record.user_id == user.id]
        return sorted(mine, key=lambda r: (r.created, r.id))

    def revoke_token(self, token_id: str) -> bool:
        if self.tokens.pop(token_id, None) is None:
            return False
        credential = "token:" + token_id  # PS-7
        self.subs = {k: s for k, s in self.subs.items() if s.credential_id != credential}
        self._bump()
        return True

    # -- states --

    def record(self, batch: list[StateRows]) -> list[int]:
        seqs: list[int] = []
        for rows in batch:
            self.seq += 1
            for account_id, type_name, state in rows:
                self.state_rows[(account_id, type_name)] = (state, self.seq)
            seqs.append(self.seq)
        return seqs

    def states(self, account_ids: set[str], after: int | None) -> dict[str, dict[str, str]]:
        result: dict[str, dict[str, str]] = {}
        for (account_id, type_name), (state, seq) in self.state_rows.items():
            if account_id in account_ids and (after is None or seq > after):
                result.setdefault(account_id, {})[type_name] = state
        return result

    # -- push subscriptions --

    def add_subscription(self, sub: PushSubscription, max_per_user: int,
                         rate: CreationRate | None = None) -> PushSubscription:
        if rate is not None:
            self.creations.check(sub.user_id, sub.created, rate)
        if sum(1 for s in self.subs.values() if s.user_id == sub.user_id) >= max_per_user:
            raise PushQuotaExceeded(max_per_user)
        if self.user_by_id(sub.user_id) is None:
            raise NoSuchUser(sub.user_id)
        if sub.id in self.subs:
            raise ValueError(f"push subscription {sub.id} already exists")
        types = None if sub.types is None else tuple(sub.types)
        self.subs[sub.id] = dataclasses.replace(sub, types=types,
                                                delivery=_copy_delivery(sub.delivery))
        if rate is not None:
            self.creations.count(sub.user_id, sub.created, rate)
        return sub

    def subscriptions(self) -> list[PushSubscription]:
        ordered = sorted(self.subs.values(), key=lambda s: (s.created, s.id))
        return [dataclasses.replace(s, delivery=_copy_delivery(s.delivery)) for s in ordered]

    def update_subscription(self, sub_id: str, changes: dict[str, object]) -> bool:
        sub = self.subs.get(sub_id)
        if sub is None:
            return False
        fields: dict[str, Any] = dict(changes)  # checked against UPDATABLE by the caller
        delivery = sub.delivery
        if "last_sent_seq" in fields:
            seq = fields.pop("last_sent_seq")
            if not isinstance(seq, int):
                raise TypeError(f"last_sent_seq must be an int: {seq!r}")
            delivery = dataclasses.replace(delivery, last_sent_seq=seq)
        if "verified" in fields:
            fields["verified"] = bool(fields["verified"])
        types = fields.get("types")
        if types is not None:
            if isinstance(types, str) or not isinstance(types, Sequence):
                raise TypeError(f"types must be a sequence of names: {types!r}")
            fields["types"] = tuple(types)
        self.subs[sub_id] = dataclasses.replace(sub, delivery=delivery, **fields)
        return True

    def save_delivery(self, sub_id: str, delivery: PushDelivery) -> bool:
        sub = self.subs.get(sub_id)
        if sub is not None:
            self.subs[sub_id] = dataclasses.replace(sub, delivery=_copy_delivery(delivery))
        return sub is not None

    def delete_other_keys(self, key_ids: Sequence[str]) -> list[str]:
        gone = [s.id for s in self.subscriptions() if s.vapid_key_id not in key_ids]
        for sub_id in gone:
            del self.subs[sub_id]
        return gone
