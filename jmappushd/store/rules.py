"""Checks and id rules every backend shares, so they agree on what they accept."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping

from jmappushd.store.interface import StateMap

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# (account id, type name, state) rows of one publish
StateRows = list[tuple[str, str, str]]

# PushSubscription fields PushSubscription/set may change (the others are immutable, PS-12).
UPDATABLE = frozenset({"verified", "client_verification_code", "expires", "types",
                       "last_sent_seq"})


def new_id(prefix: str) -> str:
    """An opaque id: a letter prefix (API-19 advises one) and 23 random id characters."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(23))


def flatten(changed: StateMap) -> StateRows:
    """Copy a publish into rows at call time (the caller may reuse its dicts)."""
    rows = [
        (account_id, type_name, state)
        for account_id, types in changed.items()
        for type_name, state in types.items()
    ]
    if not rows:
        raise ValueError("a change must name at least one (account, type) state")
    for row in rows:
        if not all(isinstance(part, str) for part in row):
            raise TypeError(f"account ids, type names and states must be strings: {row!r}")
    return rows


def copy_publish(changed: StateMap) -> dict[str, dict[str, str]]:
    """Copy a publish as nested dicts at call time, checked as :func:`flatten` checks it
    (for a store that records the publish whole rather than as rows)."""
    copied: dict[str, dict[str, str]] = {}
    for account_id, types in changed.items():
        if not types:
            continue
        copy = dict(types)
        if not (isinstance(account_id, str) and all(
                isinstance(t, str) and isinstance(v, str) for t, v in copy.items())):
            bad = next((account_id, t, v) for t, v in copy.items() if not (
                isinstance(account_id, str) and isinstance(t, str) and isinstance(v, str)))
            raise TypeError(f"account ids, type names and states must be strings: {bad!r}")
        copied[account_id] = copy
    if not copied:
        raise ValueError("a change must name at least one (account, type) state")
    return copied


def check_digest(digest: bytes) -> bytes:
    """A bearer token is stored as its SHA-256 digest only."""
    if len(digest) != 32:
        raise ValueError("a token digest is 32 bytes of SHA-256")
    return bytes(digest)


def check_updatable(changes: Mapping[str, object]) -> None:
    """Reject changes to a subscription's immutable fields (PS-12)."""
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")


def check_kept_keys(key_ids: Collection[str]) -> list[str]:
    """Destroying every subscription at once is never meant (VAPID-13, C-V-2)."""
    if not key_ids:
        raise ValueError("at least one VAPID key id must be kept")
    return sorted(set(key_ids))
