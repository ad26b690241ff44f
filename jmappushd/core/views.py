"""Restrict and encode a change once per distinct view, for one transport.

Fan-out hands one change to many listeners; those with the same (accounts,
types) view get the very same restricted map and, when it goes out unmerged with
the same resumption token (the listeners of one user), the very same bytes from
the transport's encoder. Only the newest change is remembered, so the cache stays
tiny; nothing is allocated per listener.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from jmappushd.core.hub import Change, restrict

StateMap = Mapping[str, Mapping[str, str]]
Types = frozenset[str] | None
Encoder = Callable[[StateMap, str], bytes]
"""A transport's wire form of one state map and its token (an SSE event, a frame)."""

MAX_VIEWS = 4096
"""Distinct views remembered per change; beyond that each listener restricts alone."""

MAX_TOKENS_PER_VIEW = 256
"""Encodings (one per user's token) remembered per view; beyond that each encodes alone."""


def _no_encoder(changed: StateMap, token: str) -> bytes:
    raise TypeError("this ViewCache restricts only; it has no encoder")


class _View:
    """One view's restricted map and, once encoded, its wire bytes per token."""

    __slots__ = ("encoded", "restricted")

    def __init__(self, restricted: dict[str, Mapping[str, str]]) -> None:
        self.restricted = restricted
        self.encoded: dict[str, bytes] = {}


class ViewCache:
    """Shared by every listener of one transport; see the module docstring."""

    __slots__ = ("_entries", "_last", "_seq", "_singles", "encoder")

    def __init__(self, encoder: Encoder | None = None) -> None:
        # None: a transport that only restricts here (Web Push encrypts per subscription).
        self.encoder: Encoder = encoder if encoder is not None else _no_encoder
        self._seq = -1
        self._entries: dict[tuple[frozenset[str], Types], _View] = {}
        # Views of one account and every type (a user with one account, the usual
        # listener), keyed by the account id alone: no key tuple, no walk (study 13).
        self._singles: dict[str, _View] = {}
        # The entry ``restricted`` returned last: an immediate flush encodes right after
        # it, so the hot path needs no second lookup.
        self._last: _View | None = None

    def restricted(self, change: Change, account_ids: frozenset[str], types: Types
                   ) -> dict[str, Mapping[str, str]]:
        """``change`` as this view sees it (read-only; empty when nothing is visible)."""
        if change.seq != self._seq:
            self._seq, self._entries, self._singles = change.seq, {}, {}
            self._last = None
        if types is None and len(account_ids) == 1:
            (account_id,) = account_ids
            entry = self._singles.get(account_id)
            if entry is None:
                type_states = change.changed.get(account_id)
                if not type_states:
                    return {}
                entry = _View({account_id: type_states})  # what restrict would give
                if len(self._singles) < MAX_VIEWS:
                    self._singles[account_id] = entry
            self._last = entry
            return entry.restricted
        key = (account_ids, types)
        entry = self._entries.get(key)
        if entry is None:
            entry = _View(restrict(change.changed, account_ids, types))
            if len(self._entries) < MAX_VIEWS:
                self._entries[key] = entry
        self._last = entry
        return entry.restricted

    def _entry(self, account_ids: frozenset[str], types: Types) -> _View | None:
        if types is None and len(account_ids) == 1:
            (account_id,) = account_ids
            return self._singles.get(account_id)
        return self._entries.get((account_ids, types))

    def encode(self, changed: StateMap, token: str, account_ids: frozenset[str],
               types: Types) -> bytes:
        """The wire bytes; reuses those of the view when ``changed`` is its unmerged map
        and ``token`` one it was encoded with already."""
        entry = self._last
        if entry is None or entry.restricted is not changed:
            entry = self._entry(account_ids, types)
        if entry is None or entry.restricted is not changed:
            return self.encoder(changed, token)
        encoded = entry.encoded.get(token)
        if encoded is None:
            encoded = self.encoder(changed, token)
            if len(entry.encoded) < MAX_TOKENS_PER_VIEW:
                entry.encoded[token] = encoded
        return encoded
