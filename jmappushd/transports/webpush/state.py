"""The in-memory delivery state of one push subscription, and the merge rules.

One :class:`SubState` per subscription, with ``__slots__``: an idle verified
subscription is this object plus its hub registration, no timer. ``owed`` is the
merged newest state per account and type not yet confirmed by the push service,
so it is bounded by the number of account/type pairs (DESIGN: bounded everything).

Subscriptions are durable objects owned by a credential identity, not sessions, but
they follow the one credential policy of :mod:`jmappushd.core.revalidation`: a
revoked token or a removed user ends them (the store deletes them; delivery stops
them), a grant change makes them follow the new accounts, and a *password change
does not destroy them* — the same password credential identity still owns them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec

from jmappushd.core.hub import Change, Hub, HubSubscription, merge
from jmappushd.core.revalidation import Action, load_facts, verdict
from jmappushd.core.views import ViewCache
from jmappushd.store.interface import IStore
from jmappushd.store.records import PushDelivery, PushSubscription
from jmappushd.transports.webpush.ece import parse_subscription_keys

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["HubListeners", "SubState", "merge", "settle"]

StateMap = Mapping[str, Mapping[str, str]]
ParsedKeys = tuple[ec.EllipticCurvePublicKey, bytes, bytes]


def settle(owed: dict[str, dict[str, str]], delivered: StateMap) -> None:
    """Forget what was delivered, keeping any newer state that arrived meanwhile."""
    for account_id, type_states in delivered.items():
        pending = owed.get(account_id)
        if pending is None:
            continue
        for type_name, state in type_states.items():
            if pending.get(type_name) == state:
                del pending[type_name]
        if not pending:
            del owed[account_id]


def parse_keys(record: PushSubscription) -> ParsedKeys | None:
    """The subscription's validated RFC 8291 keys (checked at create, C-PS-4)."""
    if record.keys_p256dh is None or record.keys_auth is None:
        return None
    return parse_subscription_keys(record.keys_p256dh, record.keys_auth)


class SubState:
    """Delivery bookkeeping for one subscription; also its hub listener."""

    __slots__ = (
        "accounts", "attempts", "backoff_until", "busy", "created", "credential_id", "dirty",
        "dropped", "expires", "failing_since", "gone", "hub_sub", "id", "key_id", "keys", "leaving",
        "next_attempt", "not_before", "owed", "owner", "request", "seq", "types", "url",
        "user_id", "verified",
    )

    def __init__(self, owner: Any, record: PushSubscription) -> None:
        self.owner = owner
        self.id = record.id
        self.user_id = record.user_id
        self.credential_id = record.credential_id
        self.url = record.url
        self.keys: ParsedKeys | None = parse_keys(record)
        self.key_id = record.vapid_key_id
        self.types = None if record.types is None else frozenset(record.types)
        self.expires = record.expires
        self.created = record.created
        self.verified = record.verified
        self.accounts: frozenset[str] = frozenset()
        d = record.delivery
        self.owed: dict[str, dict[str, str]] = {a: dict(t) for a, t in d.pending.items()}
        self.attempts = d.attempts
        self.next_attempt = d.next_attempt
        self.failing_since = d.failing_since
        self.seq = d.last_sent_seq
        self.dropped = d.dropped  # notifications given up in a row (the back-off exponent)
        self.backoff_until = d.backoff_until
        # Earliest next POST: throttle window, Retry-After or back-off.
        self.not_before = d.backoff_until or 0.0
        self.busy = False
        self.request: Deferred[None] | None = None
        self.hub_sub: HubSubscription | None = None
        self.gone = False
        self.leaving = False  # cluster mode: being handed to another node, sends nothing
        self.dirty = False

    def change_published(self, change: Change) -> None:
        """Hub listener entry point."""
        self.owner.offer(self, change)

    def snapshot(self) -> PushDelivery:
        """The durable part, copied (the store may serialise it on another thread)."""
        return PushDelivery({a: dict(t) for a, t in self.owed.items()}, self.attempts,
                            self.next_attempt, self.failing_since, self.seq, self.dropped,
                            self.backoff_until)

    def erase(self) -> None:
        """Forget the URL, keys and pending data of a destroyed subscription (PS-8)."""
        self.gone = True
        self.url = ""
        self.keys = None
        self.owed = {}

    def __repr__(self) -> str:
        return f"<SubState {self.id}>"


class HubListeners:
    """Hub registrations of verified subscriptions, under their user's accounts.

    Accounts are loaded once per user and looked up again when credentials or grants
    may have changed (:meth:`revalidate`); a subscription whose user's accounts changed
    is registered again. ``views`` restricts each change once per distinct view.
    """

    def __init__(self, hub: Hub, store: IStore) -> None:
        self._hub = hub
        self._store = store
        self._accounts: dict[str, frozenset[str]] = {}
        self._by_user: dict[str, set[SubState]] = {}
        self.views = ViewCache()  # restrict only: Web Push encrypts per subscription

    def add(self, sub: SubState) -> None:
        self._by_user.setdefault(sub.user_id, set()).add(sub)

    def discard(self, sub: SubState) -> None:
        if sub.hub_sub is not None:
            sub.hub_sub.cancel()
            sub.hub_sub = None
        users = self._by_user.get(sub.user_id)
        if users is not None:
            users.discard(sub)
            if not users:
                del self._by_user[sub.user_id]
                self._accounts.pop(sub.user_id, None)

    async def activate(self, sub: SubState, stopping: Callable[[], bool]) -> None:
        """Listen to the hub for the user's accounts; ``stopping`` is asked after the
        accounts load, so a stop during it is not undone by a new registration."""
        accounts = self._accounts.get(sub.user_id)
        if accounts is None:
            accounts = await self._load(sub.user_id)
        if sub.gone or stopping():
            return
        sub.accounts = accounts
        if sub.hub_sub is not None:
            sub.hub_sub.cancel()
        sub.hub_sub = self._hub.subscribe(sub, accounts)

    async def _load(self, user_id: str) -> frozenset[str]:
        accounts = frozenset(a.id for a in await self._store.accounts_for_user(user_id))
        self._accounts[user_id] = accounts
        return accounts

    async def revalidate(self, stopping: Callable[[], bool]) -> list[tuple[SubState, str]]:
        """Apply the shared credential policy; returns the subscriptions it ends, and why.

        Each user is looked up once. No password fingerprint is passed to the policy:
        a new password keeps the subscriptions its identity owns. Verified
        subscriptions of users whose grants changed are registered again.
        """
        ended: list[tuple[SubState, str]] = []
        for user_id in list(self._by_user):
            if stopping():
                break
            facts = await load_facts(self._store, user_id)
            if facts is not None and user_id in self._by_user:
                self._accounts[user_id] = facts.account_ids
            for sub in list(self._by_user.get(user_id, ())):
                found = verdict(sub.credential_id, sub.accounts, facts, None)
                if found.action is Action.END:
                    ended.append((sub, found.why))
                elif found.action is Action.FOLLOW and sub.verified and not sub.gone:
                    await self.activate(sub, stopping)
        return ended
