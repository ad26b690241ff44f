"""The unfolded tail of the change log: what ``states`` does not hold yet, in memory.

In PostgreSQL mode a publish only appends to the log (one row per publish); the
newest state per (account, type) is folded into ``states`` later, once per fold
round for each pair however often it changed, under the ``change_fold`` mark
(every change up to ``folded`` is in ``states``). A catch-up therefore reads
``states`` and lays this tail over it. Each node reads every log entry anyway (it
fans them out), so the tail costs no extra read: it is filled from the node's own
publishes, from the bus's log reads, and from a read of what lies between when a
catch-up finds the log ahead of it.

Everything here runs on the reactor thread; the store hands it results in call
order. Two marks define what it holds:

* ``folded``: the highest fold mark this process has seen; entries up to it are
  dropped (``states`` has them or newer).
* ``high``: every logged seq in ``(folded, high]`` is held, so a fold up to
  ``high`` may be made from memory alone.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping

StateMap = Mapping[str, Mapping[str, str]]
# An entry as held: parsed, or the JSON text this node logged (parsed when first needed:
# a fold or a catch-up, often never on the node that folds it).
Held = StateMap | str


class FoldRows:
    """The newest state per (account, type) of the entries in ``(base, upto]``, as the
    parallel arrays the fold statement binds."""

    __slots__ = ("accounts", "base", "seqs", "states", "types", "upto")

    def __init__(self, base: int, upto: int) -> None:
        self.base = base
        self.upto = upto
        self.accounts: list[str] = []
        self.types: list[str] = []
        self.states: list[str] = []
        self.seqs: list[int] = []

    def __len__(self) -> int:
        return len(self.seqs)

    def above(self, folded: int) -> FoldRows:
        """The rows still to write when the mark is already at ``folded`` (another node
        folded part of them first): those of entries after it."""
        if folded <= self.base:
            return self
        rows = FoldRows(folded, self.upto)
        for account_id, type_name, state, seq in zip(
                self.accounts, self.types, self.states, self.seqs, strict=True):
            if seq > folded:
                rows.accounts.append(account_id)
                rows.types.append(type_name)
                rows.states.append(state)
                rows.seqs.append(seq)
        return rows


class UnfoldedTail:
    """Log entries above the fold mark, with the newest state per pair for lookups."""

    def __init__(self, folded: int = 0, high: int | None = None) -> None:
        self.folded = folded
        self.high = folded if high is None else max(folded, high)
        self._entries: dict[int, Held] = {}
        # account -> type -> (state, seq) of the newest indexed entry naming the pair;
        # entries not indexed yet wait in _unindexed (indexing is done when needed).
        self._newest: dict[str, dict[str, tuple[str, int]]] = {}
        self._unindexed: list[int] = []
        self.changes = 0  # (account, type) pairs held, counted per entry

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def newest_seq(self) -> int:
        """The highest seq held (or ``high`` when nothing is)."""
        return max(self._entries, default=self.high)

    # -- filling --

    def add(self, seq: int, changed: StateMap) -> None:
        """One logged entry read from the log (parsed)."""
        self._hold(seq, changed, sum(len(types) for types in changed.values()))

    def add_text(self, seq: int, text: str, count: int) -> None:
        """One entry this node logged, as its JSON text, naming ``count`` pairs."""
        self._hold(seq, text, count)

    def _hold(self, seq: int, entry: Held, count: int) -> None:
        if seq <= self.folded or seq in self._entries:
            return
        self._entries[seq] = entry
        self._unindexed.append(seq)
        self.changes += count
        if seq == self.high + 1:
            self._extend()

    def _index(self) -> None:
        """Merge the entries not indexed yet into the newest state per pair."""
        if not self._unindexed:
            return
        entries, newest = self._entries, self._newest
        for seq in self._unindexed:
            changed = entries.get(seq)
            if changed is None:
                continue  # dropped by a fold meanwhile
            if isinstance(changed, str):
                changed = entries[seq] = json.loads(changed)
            for account_id, types in changed.items():
                held = newest.get(account_id)
                if held is None:
                    held = newest[account_id] = {}
                for type_name, state in types.items():
                    old = held.get(type_name)
                    if old is None or old[1] < seq:
                        held[type_name] = (state, seq)
        self._unindexed = []

    def add_read(self, after: int, entries: Iterable[tuple[int, StateMap]],
                 upto: int | None = None) -> None:
        """Entries read from the log after ``after``: every logged seq from ``after`` to
        the last one read (or to ``upto``, the read's snapshot top) is among them."""
        last = after
        for seq, changed in entries:
            self.add(seq, changed)
            last = max(last, seq)
        if upto is not None:
            last = max(last, upto)
        if after <= self.high < last:
            self.high = last
            self._extend()

    def _extend(self) -> None:
        high, entries = self.high, self._entries
        while high + 1 in entries:
            high += 1
        self.high = high

    # -- folding --

    def advance_folded(self, folded: int) -> None:
        """``states`` holds every change up to ``folded``: drop those entries."""
        if folded <= self.folded:
            return
        self.folded = folded
        if self.high < folded:
            self.high = folded
            self._extend()
        entries = self._entries
        if not entries:
            return
        if max(entries) <= folded:  # the usual case: the fold took everything
            entries.clear()
            self._newest.clear()
            self._unindexed = []
            self.changes = 0
            return
        self._index()
        gone = [s for s in entries if s <= folded]
        if 2 * len(gone) > len(entries):
            # Most entries go: rebuilding from the rest is cheaper than unpicking them.
            kept = [(s, entries[s]) for s in sorted(entries) if s > folded]
            entries.clear()
            self._newest.clear()
            self.changes = 0
            high, self.high = self.high, folded
            for seq, changed in kept:
                assert not isinstance(changed, str)  # indexed above
                self.add(seq, changed)
            self.high = max(self.high, high)
            return
        newest = self._newest
        for seq in gone:
            changed = self._entries.pop(seq)
            assert not isinstance(changed, str)  # indexed above
            for account_id, types in changed.items():
                held = newest.get(account_id)
                if held is None:
                    continue
                for type_name in types:
                    found = held.get(type_name)
                    if found is not None and found[1] == seq:
                        del held[type_name]
                if not held:
                    del newest[account_id]
                self.changes -= len(types)

    def fold_rows(self) -> FoldRows:
        """What a fold up to ``high`` writes: the newest state per pair of the entries in
        ``(folded, high]`` (entries above ``high`` wait for the ones between)."""
        self._index()
        rows = FoldRows(self.folded, self.high)
        if not self._entries or self.newest_seq <= self.high:
            pairs = ((a, t, found) for a, held in self._newest.items()
                     for t, found in held.items())
        else:
            merged: dict[tuple[str, str], tuple[str, int]] = {}
            for seq in sorted(s for s in self._entries if s <= self.high):
                entry = self._entries[seq]
                assert not isinstance(entry, str)  # indexed above
                for account_id, types in entry.items():
                    for type_name, state in types.items():
                        merged[(account_id, type_name)] = (state, seq)
            pairs = ((a, t, found) for (a, t), found in merged.items())
        for account_id, type_name, (state, seq) in pairs:
            rows.accounts.append(account_id)
            rows.types.append(type_name)
            rows.states.append(state)
            rows.seqs.append(seq)
        return rows

    # -- reading --

    def overlay(self, into: dict[str, dict[str, str]], account_ids: Collection[str],
                after: int | None) -> None:
        """Lay the held states of ``account_ids`` (changed after ``after``) over ``into``,
        states read from ``states`` with a fold mark no lower than :attr:`folded`."""
        self._index()
        newest = self._newest
        for account_id in account_ids:
            held = newest.get(account_id)
            if not held:
                continue
            for type_name, (state, seq) in held.items():
                if after is None or seq > after:
                    into.setdefault(account_id, {})[type_name] = state
