"""The JSON bodies the daemon pushes: PushVerification and StateChange (SC-1, SC-3, SC-4).

A Web Push body is at most 4096 octets, which leaves :data:`MAX_PAYLOAD` (3993) octets of
JSON once encrypted (ENC-7, WP-7). A larger StateChange is split (C-WP-3): by account
first, and an account whose own TypeState is still too large by type, so every part is
a valid StateChange of its own. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping

from jmappushd.jmap.ijson import dumps
from jmappushd.transports.webpush.b64 import b64url_encode
from jmappushd.transports.webpush.ece import MAX_PLAINTEXT

__all__ = ["MAX_PAYLOAD", "Part", "split_state_change", "state_change", "topic_for",
           "verification"]

MAX_PAYLOAD = MAX_PLAINTEXT
StateMap = Mapping[str, Mapping[str, str]]
Part = tuple[bytes, dict[str, dict[str, str]]]
"""One StateChange body and the states it carries (to settle them once it is delivered)."""

_EMPTY_LEN = len(dumps({"@type": "StateChange", "changed": {}}))


def verification(subscription_id: str, code: str) -> bytes:
    """The PushVerification object (SC-3)."""
    return dumps({"@type": "PushVerification", "pushSubscriptionId": subscription_id,
                  "verificationCode": code})


def state_change(changed: StateMap) -> bytes:
    """A Web Push StateChange: only ``@type`` and ``changed``, no ``pushState`` (SC-4)."""
    return dumps({"@type": "StateChange", "changed": changed})


@functools.lru_cache(maxsize=65536)
def topic_for(subscription_id: str) -> str:
    """A stable per-subscription Topic: 22 base64url characters (WP-4, C-WP-1)."""
    return b64url_encode(hashlib.sha256(subscription_id.encode("utf-8")).digest())[:22]


def _member_len(key: str, value: object) -> int:
    """Octets ``"key":value`` adds to a compact JSON object."""
    return len(dumps(key)) + 1 + len(dumps(value))


class _Packer:
    """Greedily fills StateChange parts up to ``limit`` octets, by whole accounts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[dict[str, dict[str, str]]] = []
        self._current: dict[str, dict[str, str]] = {}
        self._size = _EMPTY_LEN

    def add(self, account_id: str, type_states: dict[str, str]) -> bool:
        """Add one account's TypeState; False if it cannot fit even in an empty part."""
        extra = _member_len(account_id, type_states) + (1 if self._current else 0)
        if self._size + extra > self.limit and self._current:
            self.flush()
            extra -= 1
        if self._size + extra > self.limit:
            return False
        self._current[account_id] = type_states
        self._size += extra
        return True

    def add_type(self, account_id: str, type_name: str, state: str) -> bool:
        """Add one type of an oversized account, starting a new part when this one is full."""
        current = self._current.get(account_id)
        if current is None:
            return self.add(account_id, {type_name: state})
        trial = {**current, type_name: state}
        size = self._size - _member_len(account_id, current) + _member_len(account_id, trial)
        if size <= self.limit:
            self._current[account_id] = trial
            self._size = size
            return True
        self.flush()
        return self.add(account_id, {type_name: state})

    def flush(self) -> None:
        if self._current:
            self.parts.append(self._current)
        self._current = {}
        self._size = _EMPTY_LEN


def split_state_change(changed: StateMap, limit: int = MAX_PAYLOAD) -> tuple[list[Part], int]:
    """Split ``changed`` into StateChange bodies of at most ``limit`` octets (C-WP-3).

    Returns the parts and the number of (account, type) states that could not fit
    any body (only possible with absurdly long ids or states; the caller logs them).
    """
    whole = state_change(changed)
    if len(whole) <= limit:
        return [(whole, {a: dict(t) for a, t in changed.items()})], 0
    packer = _Packer(limit)
    unfit = 0
    for account_id, type_states in changed.items():
        if packer.add(account_id, dict(type_states)):
            continue
        packer.flush()  # the account alone is too large: cut it by type
        for type_name, state in type_states.items():
            if not packer.add_type(account_id, type_name, state):
                unfit += 1
        packer.flush()
    packer.flush()
    return [(state_change(part), part) for part in packer.parts], unfit
