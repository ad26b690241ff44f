"""How many connections each peer address holds, and whether it may open another.

One address must not take every descriptor of the daemon (``[server]
max-connections-per-address``). The count is by the address the socket was accepted
from: nothing has been read yet at that point, so a forwarded-for header cannot apply,
and behind a reverse proxy every connection counts for the proxy. A refused connection
costs one dictionary lookup; an address with no open connection has no entry.
"""

from __future__ import annotations


class PeerLimit:
    """Counts open connections per peer address, at most ``limit`` each (0 = no limit)."""

    __slots__ = ("_open", "limit", "refused")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be 0 (none) or positive")
        self.limit = limit
        self.refused = 0
        self._open: dict[str, int] = {}

    def admit(self, host: str) -> bool:
        """Count one more connection from ``host``, or refuse it (and count the refusal)."""
        held = self._open.get(host, 0)
        if self.limit and held >= self.limit:
            self.refused += 1
            return False
        self._open[host] = held + 1
        return True

    def release(self, host: str) -> None:
        """One admitted connection from ``host`` has closed."""
        held = self._open.get(host, 0)
        if held <= 1:
            self._open.pop(host, None)
        else:
            self._open[host] = held - 1

    def held(self, host: str) -> int:
        """Open connections from ``host``."""
        return self._open.get(host, 0)

    def __len__(self) -> int:
        """Addresses with at least one open connection."""
        return len(self._open)
