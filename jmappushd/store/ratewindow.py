"""The creation rate limit of the single-process stores (memory, SQLite), in memory.

Only one daemon creates push subscriptions on those stores (``jmappushctl`` creates
none), so the window can live with the store object: a sliding window per user of the
creation times, forgotten at restart. PostgreSQL, shared by a cluster, keeps the same
window in a table instead (:mod:`jmappushd.store.pgpushops`).
"""

from __future__ import annotations

from collections import deque

from jmappushd.store.records import CreationRate, PushRateLimited

__all__ = ["CreationWindows"]


class CreationWindows:
    """Recent creation times per user; at most ``max_users`` users' windows kept."""

    def __init__(self, max_users: int = 10_000) -> None:
        self._max_users = max_users
        self._recent: dict[str, deque[float]] = {}

    def check(self, user_id: str, now: float, rate: CreationRate) -> None:
        """Raise PushRateLimited if ``user_id`` has ``rate.limit`` creations in the window
        ending at ``now``; nothing is counted (see :meth:`count`)."""
        recent = self._recent.get(user_id)
        if recent is None:
            return
        while recent and recent[0] <= now - rate.window:
            recent.popleft()
        if len(recent) >= rate.limit:
            raise PushRateLimited(rate)

    def count(self, user_id: str, now: float, rate: CreationRate) -> None:
        """Count one creation made at ``now`` (after it was stored)."""
        recent = self._recent.get(user_id)
        if recent is None:
            if len(self._recent) >= self._max_users:
                self._prune(now, rate.window)
            recent = self._recent[user_id] = deque()
        recent.append(now)
        while len(recent) > rate.limit:  # older ones can no longer decide anything
            recent.popleft()

    def __len__(self) -> int:
        return len(self._recent)

    def _prune(self, now: float, window: float) -> None:
        """Forget users whose newest creation left the window (keeps memory bounded)."""
        for user_id in [u for u, r in self._recent.items() if not r or r[-1] <= now - window]:
            del self._recent[user_id]
