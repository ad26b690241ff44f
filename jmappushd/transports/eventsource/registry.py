"""Every open EventSource stream, by user: limits, shutdown and revocation.

The policy (a removed user, a revoked token or a changed password ends the
streams it opened; grant changes are followed) is the one every transport uses,
in :mod:`jmappushd.core.revalidation`; this is the EventSource instance of the
shared :class:`~jmappushd.core.connections.ConnectionRegistry`. An ended stream
finishes its response.
"""

from __future__ import annotations

from jmappushd.core.connections import ConnectionRegistry
from jmappushd.core.revalidation import password_fingerprint
from jmappushd.store.interface import IStore
from jmappushd.transports.eventsource.stream import EventStream

__all__ = ["StreamRegistry", "password_fingerprint"]


class StreamRegistry(ConnectionRegistry[EventStream]):
    """The EventSource connection registry (its own per-user counts)."""

    def __init__(self, store: IStore) -> None:
        super().__init__(store, "EventSource")

    def streams(self) -> list[EventStream]:
        return self.members()
