"""API requests in flight per user, across every transport (API-21, WS-15).

RFC 8620 §2's ``maxConcurrentRequests`` limits what one user runs at once, and RFC 8887
§4.3.2 says requests on a WebSocket count towards it too. One counter per daemon
(on ``App``), shared by the HTTP API and every WebSocket, so a user with many sockets
gets no more than one with a single HTTP connection.
"""

from __future__ import annotations


class InFlightRequests:
    """Counts each user's requests being processed; refuses those over ``limit``."""

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, user_id: str) -> bool:
        """Count one more request for ``user_id``, unless that would pass the limit."""
        count = self._counts.get(user_id, 0)
        if count >= self.limit:
            return False
        self._counts[user_id] = count + 1
        return True

    def release(self, user_id: str) -> None:
        """One of ``user_id``'s requests is answered (or failed)."""
        count = self._counts.get(user_id, 0) - 1
        if count > 0:
            self._counts[user_id] = count
        else:
            self._counts.pop(user_id, None)

    def count(self, user_id: str) -> int:
        return self._counts.get(user_id, 0)
