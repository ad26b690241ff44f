"""The storage seam: everything the daemon and ``jmappushctl`` keep durably.

SQLite is the embedded default; a PostgreSQL store can replace it later, so the
rest of the code sees only this interface. Every method returns a Deferred and
never blocks the reactor.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Interface

from jmappushd.store.records import Account, PushDelivery, PushSubscription, TokenRecord, User

# account id -> type name -> state string
StateMap = Mapping[str, Mapping[str, str]]


class IStore(Interface):
    """Users, credentials, account grants, current states and the change sequence."""

    def open() -> Deferred[None]:
        """Create or migrate the schema; fails with SchemaTooNew for a newer file."""

    def close() -> Deferred[None]:
        """Finish queued work and release the database; idempotent."""

    # users and accounts

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
        """Delete a user with its tokens, grants and push subscriptions."""

    def set_password(name: str, password_hash: str) -> Deferred[None]:
        """Replace the password hash; fails with NoSuchUser."""

    def grant(name: str, account_id: str) -> Deferred[None]:
        """Let the user read another account; fails with NoSuchUser."""

    def revoke_grant(name: str, account_id: str) -> Deferred[bool]:
        """Withdraw a grant; False if there was none."""

    def accounts_for_user(user_id: str) -> Deferred[list[Account]]:
        """The primary account first, then granted accounts sorted by id."""

    # bearer tokens

    def create_token(name: str, digest: bytes, label: str = "") -> Deferred[TokenRecord]:
        """Store a token's SHA-256 digest for the user; fails with NoSuchUser."""

    def find_token(digest: bytes) -> Deferred[tuple[TokenRecord, User] | None]:
        """The token with this digest and its owner, or None."""

    def list_tokens(name: str) -> Deferred[list[TokenRecord]]:
        """The user's tokens, oldest first (empty for an unknown user)."""

    def revoke_token(token_id: str) -> Deferred[bool]:
        """Delete a token and the push subscriptions created with it."""

    def auth_generation() -> Deferred[int]:
        """A counter bumped by every change to users, passwords, grants or tokens."""

    # states and the durable change sequence

    def position() -> Deferred[tuple[str, int]]:
        """``(epoch, last seq)``; the epoch changes only when the store is recreated."""

    def record_changes(changed: StateMap) -> Deferred[int]:
        """Durably record one publish under a new seq; fires (in call order) after commit."""

    def record_changes_batch(batch: Sequence[StateMap]) -> Deferred[list[int]]:
        """Record several publishes in one transaction, one seq each."""

    def changes_since(
        seq: int, account_ids: Collection[str]
    ) -> Deferred[dict[str, dict[str, str]]]:
        """Newest state of every (account, type) among ``account_ids`` changed after ``seq``."""

    def current_states(account_ids: Collection[str]) -> Deferred[dict[str, dict[str, str]]]:
        """Newest state of every type of the given accounts."""

    # small key/value metadata

    def get_meta(key: str) -> Deferred[str | None]:
        """A metadata value (VAPID key, admin settings), or None."""

    def set_meta(key: str, value: str) -> Deferred[None]:
        """Insert or replace a metadata value."""

    # push subscriptions (RFC 8620 §7.2); they belong to the credential that created them

    def create_push_subscription(
        subscription: PushSubscription, max_per_user: int
    ) -> Deferred[PushSubscription]:
        """Store a new subscription (its id already set); fails with PushQuotaExceeded when
        the user (all credentials together) already has ``max_per_user`` (PS-19)."""

    def push_subscriptions_for(credential_id: str) -> Deferred[list[PushSubscription]]:
        """The subscriptions created with this credential, oldest first (PS-7)."""

    def all_push_subscriptions() -> Deferred[list[PushSubscription]]:
        """Every subscription, for the delivery service to load at start."""

    def push_subscription_ids() -> Deferred[set[str]]:
        """The ids of every subscription (to notice ones deleted behind our back)."""

    def update_push_subscription(sub_id: str, changes: Mapping[str, object]) -> Deferred[bool]:
        """Change ``verified``, ``client_verification_code``, ``expires``, ``types`` or
        ``last_sent_seq``; False if the subscription no longer exists."""

    def save_push_delivery(sub_id: str, delivery: PushDelivery) -> Deferred[bool]:
        """Replace the subscription's pending notification state; False if it is gone."""

    def delete_push_subscription(sub_id: str) -> Deferred[bool]:
        """Destroy a subscription, erasing its URL and keys (PS-8)."""

    def delete_push_subscriptions_except_keys(key_ids: Collection[str]) -> Deferred[list[str]]:
        """Destroy every subscription not tied to one of the VAPID keys ``key_ids``;
        returns their ids."""
