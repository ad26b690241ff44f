"""The storage seams: everything the daemon and ``jmappushctl`` keep durably.

SQLite is the embedded default and :mod:`jmappushd.store.memory` the in-process
one; a PostgreSQL store can replace them later, so the rest of the code sees only
these interfaces. Every method returns a Deferred and never blocks the reactor.
Each consumer should ask for the narrowest interface it uses (the hub takes an
:class:`IStateLog`); :class:`IStore` is the union a backend provides.

Ordering, which every backend guarantees and ``tests/test_store_conformance.py``
checks, for all methods of all these interfaces on one store object:

(a) **Call order.** The Deferreds of a store's calls fire in the order the calls
    were made, whatever the method, including calls that fail (a bad argument
    fails in its turn, not ahead of earlier calls). ``record_changes_batch``
    assigns sequence numbers in commit order: contiguous, increasing by one per
    publish, continuing from ``position()``.
(b) **Read your writes.** A call made after a write's Deferred fired sees that
    write.
(c) **Reads see every earlier call.** A read made after a write was *called*,
    even before its Deferred fired, sees that write too, and fires after it. The
    hub and the Web Push delivery rely on this: a ``changes_since`` made now
    answers only after every publish already handed to the store has been
    announced, so its answer is never older than what listeners merged live.

These hold per store object. Other store objects on the same data (another
process: ``jmappushctl``) may write concurrently; a call sees every such write
that committed before the call began. Calls made after ``close()`` fail at once
with StoreClosed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Interface

from jmappushd.store.records import (
    Account,
    CreationRate,
    PushDelivery,
    PushSubscription,
    TokenRecord,
    User,
)

# account id -> type name -> state string
StateMap = Mapping[str, Mapping[str, str]]


class IStoreLifecycle(Interface):
    """Opening and closing a store; every other call needs it open."""

    def open() -> Deferred[None]:
        """Create or migrate the schema; fails with SchemaTooNew for a newer one."""

    def close() -> Deferred[None]:
        """Finish queued work (it still fires in order) and release the data; idempotent."""


class IPrincipalStore(Interface):
    """Users, passwords, account grants and bearer tokens, with their generation."""

    def add_user(name: str, password_hash: str, account_id: str | None = None) -> Deferred[User]:
        """Create a user whose primary account is ``account_id`` (or a new opaque id).

        Fails with UserExists or AccountInUse.
        """

    def get_user(name: str) -> Deferred[User | None]:
        """The user called ``name``, or None."""

    def get_user_by_id(user_id: str) -> Deferred[User | None]:
        """The user with this id, or None."""

    def list_users() -> Deferred[list[User]]:
        """Every user, sorted by name."""

    def remove_user(name: str) -> Deferred[bool]:
        """Delete a user with its tokens, grants and push subscriptions; False if unknown."""

    def set_password(name: str, password_hash: str) -> Deferred[None]:
        """Replace the password hash; fails with NoSuchUser."""

    def grant(name: str, account_id: str) -> Deferred[None]:
        """Let the user read another account (a no-op for its own); fails with NoSuchUser."""

    def revoke_grant(name: str, account_id: str) -> Deferred[bool]:
        """Withdraw a grant; False if there was none."""

    def accounts_for_user(user_id: str) -> Deferred[list[Account]]:
        """The primary account first, then granted accounts sorted by id (empty if unknown)."""

    def create_token(name: str, digest: bytes, label: str = "") -> Deferred[TokenRecord]:
        """Store a token's 32-byte SHA-256 digest for the user; fails with NoSuchUser
        (or ValueError for another digest length)."""

    def find_token(digest: bytes) -> Deferred[tuple[TokenRecord, User] | None]:
        """The token with this digest and its owner, or None."""

    def list_tokens(name: str) -> Deferred[list[TokenRecord]]:
        """The user's tokens, oldest first (empty for an unknown user)."""

    def revoke_token(token_id: str) -> Deferred[bool]:
        """Delete a token and the push subscriptions created with it (PS-7)."""

    def auth_generation() -> Deferred[int]:
        """A counter bumped by every effective change to users, passwords, grants or
        tokens (a no-op change, such as a repeated grant, leaves it alone)."""


class IStateLog(Interface):
    """Current states and the durable change sequence behind resumption tokens."""

    def position() -> Deferred[tuple[str, int]]:
        """``(epoch, last seq)``; the epoch changes only when the store is recreated."""

    def record_changes(changed: StateMap) -> Deferred[int]:
        """Record one publish under a new seq, as a batch of one."""

    def record_changes_batch(batch: Sequence[StateMap]) -> Deferred[list[int]]:
        """Record several publishes in one transaction, one seq each, in order.

        Each publish names at least one (account, type) state, all strings
        (ValueError / TypeError otherwise, and nothing is recorded). Fires after
        the commit; an empty batch records nothing and fires with ``[]``.
        """

    def changes_since(
        seq: int, account_ids: Collection[str]
    ) -> Deferred[dict[str, dict[str, str]]]:
        """Newest state of every (account, type) among ``account_ids`` changed after ``seq``."""

    def current_states(account_ids: Collection[str]) -> Deferred[dict[str, dict[str, str]]]:
        """Newest state of every type of the given accounts."""


class IMetadataStore(Interface):
    """Small key/value settings: the VAPID key ring, admin settings."""

    def get_meta(key: str) -> Deferred[str | None]:
        """A metadata value, or None."""

    def set_meta(key: str, value: str) -> Deferred[None]:
        """Insert or replace a metadata value."""

    def add_meta(key: str, value: str) -> Deferred[str]:
        """Store ``value`` under ``key`` unless a value is there already; fires with the
        stored one. Atomic: of concurrent callers (several daemons on one store), one
        value wins and every caller gets it (how a secret generated once is shared)."""


class IPushStore(Interface):
    """Push subscriptions (RFC 8620 §7.2) and their pending deliveries.

    A subscription belongs to its user and to the credential that created it;
    removing either destroys it.
    """

    def create_push_subscription(
        subscription: PushSubscription, max_per_user: int, rate: CreationRate | None = None
    ) -> Deferred[PushSubscription]:
        """Store a new subscription (its id already set); fails with PushQuotaExceeded when
        the user (all credentials together) already has ``max_per_user`` (PS-19).

        With ``rate``, it first fails with PushRateLimited (nothing stored or counted) if
        the user's creations in the ``rate.window`` seconds up to ``subscription.created``
        number ``rate.limit``; a stored one counts. PostgreSQL counts every store object
        on the database (every node of a cluster); SQLite and memory count this store
        object's creations only (one daemon creates there) and forget them on restart.
        """

    def push_subscriptions_for(credential_id: str) -> Deferred[list[PushSubscription]]:
        """The subscriptions created with this credential, oldest first (PS-7)."""

    def all_push_subscriptions() -> Deferred[list[PushSubscription]]:
        """Every subscription, oldest first, for the delivery service to load at start."""

    def push_subscription_ids() -> Deferred[set[str]]:
        """The ids of every subscription (to notice ones deleted behind our back)."""

    def update_push_subscription(sub_id: str, changes: Mapping[str, object]) -> Deferred[bool]:
        """Change ``verified``, ``client_verification_code``, ``expires``, ``types`` or
        ``last_sent_seq`` (ValueError for another key); False if the subscription is gone."""

    def save_push_delivery(sub_id: str, delivery: PushDelivery) -> Deferred[bool]:
        """Replace the subscription's pending notification state; False if it is gone."""

    def delete_push_subscription(sub_id: str) -> Deferred[bool]:
        """Destroy a subscription, erasing its URL and keys (PS-8)."""

    def delete_push_subscriptions_except_keys(key_ids: Collection[str]) -> Deferred[list[str]]:
        """Destroy every subscription not tied to one of the VAPID keys ``key_ids`` (at
        least one; ValueError otherwise); returns their ids."""


class IStore(IStoreLifecycle, IPrincipalStore, IStateLog, IMetadataStore, IPushStore):
    """Everything above: what a storage backend provides and the daemon wires in."""


STORE_INTERFACES = (IStoreLifecycle, IPrincipalStore, IStateLog, IMetadataStore, IPushStore,
                    IStore)
