"""The per-user creation rate limit for push subscriptions (PS-19, DESIGN: bounded).

Verification POSTs go to any URL a client names, so creations are rate-limited per
user: a client cannot use the daemon to flood a third party.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IReactorTime

__all__ = ["CreationRateLimiter"]


class CreationRateLimiter:
    """At most ``limit`` creations per user in any ``window`` seconds (a sliding window)."""

    def __init__(self, clock: IReactorTime, limit: int, window: float = 60.0,
                 max_users: int = 10_000) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._max_users = max_users
        self._recent: dict[str, deque[float]] = {}

    @property
    def limit(self) -> int:
        return self._limit

    def allow(self, user_id: str) -> bool:
        """Count one creation for ``user_id``; False (nothing counted) if over the limit."""
        now = self._clock.seconds()
        recent = self._recent.get(user_id)
        if recent is None:
            if len(self._recent) >= self._max_users:
                self._prune(now)
            recent = self._recent[user_id] = deque()
        while recent and recent[0] <= now - self._window:
            recent.popleft()
        if len(recent) >= self._limit:
            return False
        recent.append(now)
        return True

    def _prune(self, now: float) -> None:
        """Forget users whose newest creation left the window (keeps memory bounded)."""
        for user_id in [u for u, r in self._recent.items() if not r or r[-1] <= now - self._window]:
            del self._recent[user_id]
