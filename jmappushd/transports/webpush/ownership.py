"""Which push subscriptions this node delivers, and the record it makes before each POST.

The delivery service asks an :class:`Ownership` two things: does this node deliver a
subscription (``owns``), and record its delivery state (``save``), which in cluster
mode is also the check that the node still holds the subscription's bucket. With a
single daemon (:class:`Everything`) the answer to the first is always yes and the
second is the store's plain write. In cluster mode the
:class:`~jmappushd.transports.webpush.leases.LeaseKeeper` answers both from its
leases.
"""

from __future__ import annotations

import enum
from typing import Protocol

from twisted.internet.defer import Deferred

from jmappushd.store.interface import IStore
from jmappushd.store.records import PushDelivery

__all__ = ["Everything", "Ownership", "Saved"]


class Saved(enum.Enum):
    """The outcome of recording a subscription's delivery state."""

    SAVED = "saved"  # recorded: the POST may go out
    GONE = "gone"  # the row is gone (destroyed elsewhere): nothing to record
    NOT_HELD = "not held"  # another node delivers it now: no POST from here
    UNSURE = "unsure"  # the lease could not be checked (database down): no POST, retry


class Ownership(Protocol):
    def owns(self, sub_id: str) -> bool:
        """Whether this node delivers ``sub_id`` now."""

    def save(self, sub_id: str, delivery: PushDelivery) -> Deferred[Saved]:
        """Record the delivery state; errors of a plain store write propagate."""

    def lost(self, sub_id: str) -> None:
        """A save answered NOT_HELD: the bucket is no longer this node's."""


class Everything:
    """One daemon delivers every subscription; saving is the store's write."""

    def __init__(self, store: IStore) -> None:
        self._store = store

    def owns(self, sub_id: str) -> bool:
        return True

    def save(self, sub_id: str, delivery: PushDelivery) -> Deferred[Saved]:
        d = self._store.save_push_delivery(sub_id, delivery)
        return d.addCallback(lambda found: Saved.SAVED if found else Saved.GONE)

    def lost(self, sub_id: str) -> None:
        raise AssertionError("a single daemon never loses a subscription to another node")
