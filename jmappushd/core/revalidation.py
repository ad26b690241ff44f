"""One credential-revalidation policy for every transport.

When the authenticator says credentials may have changed, each user with live
listeners is looked up once (:func:`load_facts`) and every listener gets a
verdict from the pure :func:`verdict`: the user was removed, the bearer token it
was opened with was revoked, or the password it was opened with changed → it
ends; the grants changed → it follows the new account set; otherwise nothing.

No credentials are kept: a password listener is compared by a short fingerprint
of the stored (salted) hash, taken when the user's first password listener opens.

Web Push subscriptions are durable objects owned by a credential identity, not
sessions: a revoked token or a removed user deletes them in the store, and a
grant change makes them follow the new accounts, but a *password change does not
destroy them* (the same password identity still owns them). Their caller passes
``remembered_fp=None``, which never ends anything for a password.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from jmappushd.auth.authenticator import PASSWORD_CREDENTIAL, TOKEN_CREDENTIAL
from jmappushd.store.interface import IStore
from jmappushd.store.records import Account


def password_fingerprint(password_hash: str) -> bytes:
    """Enough to notice a changed hash; useless for anything else."""
    return hashlib.sha256(password_hash.encode("utf-8")).digest()[:16]


def is_password(credential_id: str) -> bool:
    return credential_id.startswith(PASSWORD_CREDENTIAL)


@dataclass(frozen=True, slots=True)
class UserFacts:
    """What the store says about one user now (looked up once per revalidation)."""

    token_ids: frozenset[str]
    password_fp: bytes
    accounts: tuple[Account, ...]
    account_ids: frozenset[str]


class Action(enum.Enum):
    KEEP = "keep"
    FOLLOW = "follow"  # grants changed: listen to ``facts.accounts`` from now on
    END = "end"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    why: str = ""


KEEP = Verdict(Action.KEEP)
FOLLOW = Verdict(Action.FOLLOW, "grants changed")
USER_REMOVED = Verdict(Action.END, "user removed")
TOKEN_REVOKED = Verdict(Action.END, "token revoked")
PASSWORD_CHANGED = Verdict(Action.END, "password changed")


async def load_facts(store: IStore, user_id: str) -> UserFacts | None:
    """The user's tokens, password fingerprint and accounts; None if it was removed."""
    user = await store.get_user_by_id(user_id)
    if user is None:
        return None
    tokens = await store.list_tokens(user.name)
    accounts = tuple(await store.accounts_for_user(user_id))
    return UserFacts(frozenset(t.id for t in tokens), password_fingerprint(user.password_hash),
                     accounts, frozenset(a.id for a in accounts))


def verdict(credential_id: str, account_ids: frozenset[str], facts: UserFacts | None,
            remembered_fp: bytes | None) -> Verdict:
    """What happens to one listener opened with ``credential_id`` (pure, C-WS-5).

    ``remembered_fp`` is the user's password fingerprint when its password listeners
    opened (None: unknown, or a Web Push subscription, which a new password keeps).
    """
    if facts is None:
        return USER_REMOVED
    if credential_id.startswith(TOKEN_CREDENTIAL):
        if credential_id[len(TOKEN_CREDENTIAL):] not in facts.token_ids:
            return TOKEN_REVOKED
    elif remembered_fp is not None and remembered_fp != facts.password_fp:
        # A listener opened with the new password while the change was being noticed
        # may be ended too; its client just reconnects.
        return PASSWORD_CHANGED
    if account_ids != facts.account_ids:
        return FOLLOW
    return KEEP
