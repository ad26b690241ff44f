"""Checks and id rules every backend shares, so they agree on what they accept."""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping
from itertools import chain
from typing import cast

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


_STR = {str}
_DICT = {dict}
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


def publish_json(changed: StateMap) -> tuple[str, int]:
    """A publish as compact JSON and its number of (account, type) states, checked as
    :func:`flatten` checks it (for a store that logs each publish whole). The text is
    the copy made at call time: the caller may reuse its dicts."""
    # Only dicts pass the first test; the others go to the walk below.
    inner = cast(list[dict[str, str]], list(changed.values()))
    if (inner and all(inner) and set(map(type, inner)) == _DICT
            and set(map(type, changed)) == _STR
            and set(map(type, chain.from_iterable(inner))) == _STR
            and set(map(type, chain.from_iterable(map(dict.values, inner)))) == _STR):
        # Every check of the walk at once, without a Python step per state (study
        # 12); the walk runs only to name what is wrong.
        return _COMPACT(changed), sum(map(len, inner))
    return walked_publish_json(changed)


def walked_publish_json(changed: StateMap) -> tuple[str, int]:
    """:func:`publish_json` one state at a time: the reference its quick check must
    answer as, and the path that names what is wrong."""
    count = 0
    empty = False
    for account_id, types in changed.items():
        if not types:
            empty = True
            continue
        if not isinstance(account_id, str):
            raise TypeError("account ids, type names and states must be strings: "
                            f"{account_id!r}")
        for type_name, state in types.items():
            if not (isinstance(type_name, str) and isinstance(state, str)):
                raise TypeError("account ids, type names and states must be strings: "
                                f"{(account_id, type_name, state)!r}")
        count += len(types)
    if not count:
        raise ValueError("a change must name at least one (account, type) state")
    if empty:
        changed = {a: types for a, types in changed.items() if types}
    return _COMPACT(changed), count


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
