"""SQL for push delivery leases: which live node delivers which bucket of subscriptions.

Every Web Push subscription hashes into one of :data:`BUCKETS` buckets (the first
byte of the SHA-256 of its id, the same in Python and in SQL). Each bucket has one
row in ``push_leases``: its owner and until when, in the database's clock, so no
two nodes' clocks need agree. Nodes also keep a heartbeat row in ``cluster_nodes``,
renewed in the same transaction, so each can count the live nodes and take only
its fair share (``ceil(BUCKETS / live)``): a joining node gets buckets as the others
hand back their excess, a dead node's buckets go to the survivors when they expire.
``FOR UPDATE SKIP LOCKED`` lets two nodes take over at once without waiting on or
taking each other's rows.

The fence (:func:`save_delivery_fenced`): a node records each attempt before its
POST with an ``UPDATE`` that only matches while the node holds the bucket with more
than ``margin`` seconds left. A node that lost its lease (partitioned, paused,
behind on renewals) therefore cannot start a POST, and a POST that starts ends
(``margin`` is the push timeout) before another node can take the bucket over: the
next owner never races an older state past a newer one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection
from typing import NamedTuple

from jmappushd.store.pgops import Cursor
from jmappushd.store.pgpushops import _SELECT, SAVE_DELIVERY, _record, delivery_values
from jmappushd.store.records import PushDelivery, PushSubscription

BUCKETS = 256

# The bucket of a subscription id in SQL: the first byte of SHA-256 of its UTF-8 text.
BUCKET_SQL = "get_byte(sha256(convert_to(id, 'UTF8')), 0)"


def bucket_of(sub_id: str) -> int:
    """The subscription's bucket (matches :data:`BUCKET_SQL`)."""
    return hashlib.sha256(sub_id.encode("utf-8")).digest()[0]


class Renewal(NamedTuple):
    """What one renewal found: the buckets this node holds now and what to do next."""

    held: frozenset[int]  # renewed or taken: ``lease_time`` from the database's now
    excess: frozenset[int]  # held above the fair share: hand back once drained
    live_nodes: int  # nodes with an unexpired heartbeat, this one included
    next_expiry: float | None  # s until the soonest other node's bucket lease expires
    namesakes: int = 0  # other live owners with the same node name (a misconfiguration)


def renew(cursor: Cursor, node: str, lease_time: float) -> Renewal:
    """Heartbeat, renew this node's leases and take expired buckets up to its share.

    ``node`` is the owner key ``name/incarnation``; owners sharing a name are counted."""
    cursor.execute(
        "INSERT INTO cluster_nodes (name, expires) "
        "VALUES (%s, clock_timestamp() + make_interval(secs => %s)) "
        "ON CONFLICT (name) DO UPDATE SET expires = excluded.expires", (node, lease_time))
    cursor.execute("DELETE FROM cluster_nodes "
                   "WHERE expires < clock_timestamp() - make_interval(secs => %s)",
                   (lease_time,))
    cursor.execute("SELECT count(*) FROM cluster_nodes WHERE expires > clock_timestamp()")
    row = cursor.fetchone()
    live = max(1, int(row[0]) if row is not None else 1)
    share = math.ceil(BUCKETS / live)
    cursor.execute(
        "UPDATE push_leases SET expires = clock_timestamp() + make_interval(secs => %s) "
        "WHERE owner = %s AND expires > clock_timestamp() RETURNING bucket",
        (lease_time, node))
    held = {int(r[0]) for r in cursor.fetchall()}
    if len(held) < share:
        cursor.execute(
            "SELECT bucket FROM push_leases WHERE expires <= clock_timestamp() "
            "ORDER BY bucket LIMIT %s FOR UPDATE SKIP LOCKED", (share - len(held),))
        taken = [int(r[0]) for r in cursor.fetchall()]
        if taken:
            cursor.execute(
                "UPDATE push_leases SET owner = %s, "
                "expires = clock_timestamp() + make_interval(secs => %s) "
                "WHERE bucket = ANY(%s)", (node, lease_time, taken))
            held.update(taken)
    excess = frozenset(sorted(held)[share:]) if len(held) > share else frozenset()
    name = node.rsplit("/", 1)[0]
    cursor.execute("SELECT count(*) FROM cluster_nodes WHERE expires > clock_timestamp() "
                   "AND name <> %s AND left(name, %s) = %s",
                   (node, len(name) + 1, name + "/"))
    row = cursor.fetchone()
    namesakes = int(row[0]) if row is not None else 0
    cursor.execute(
        "SELECT extract(epoch FROM min(expires) - clock_timestamp()) FROM push_leases "
        "WHERE owner IS DISTINCT FROM %s AND expires > clock_timestamp()", (node,))
    soonest = cursor.fetchone()
    next_expiry = None if soonest is None or soonest[0] is None else max(0.0, float(soonest[0]))
    return Renewal(frozenset(held), excess, live, next_expiry, namesakes)


def release(cursor: Cursor, node: str, buckets: Collection[int]) -> int:
    """Hand buckets back at once (drained excess, or shutdown); returns how many."""
    cursor.execute("UPDATE push_leases SET owner = NULL, expires = '-infinity' "
                   "WHERE owner = %s AND bucket = ANY(%s)", (node, list(buckets)))
    return cursor.rowcount


def leave(cursor: Cursor, node: str) -> None:
    """Shutdown: every lease back and the heartbeat gone, so the share grows at once."""
    cursor.execute("UPDATE push_leases SET owner = NULL, expires = '-infinity' "
                   "WHERE owner = %s", (node,))
    cursor.execute("DELETE FROM cluster_nodes WHERE name = %s", (node,))


def subscriptions_in(cursor: Cursor, buckets: Collection[int]) -> list[PushSubscription]:
    """The subscriptions of some buckets, for a node that just took them."""
    cursor.execute(_SELECT + f" WHERE {BUCKET_SQL} = ANY(%s) ORDER BY created, id",
                   (list(buckets),))
    return [_record(row) for row in cursor.fetchall()]


def subscription(cursor: Cursor, sub_id: str) -> PushSubscription | None:
    cursor.execute(_SELECT + " WHERE id = %s", (sub_id,))
    row = cursor.fetchone()
    return None if row is None else _record(row)


class Fenced(NamedTuple):
    """The answer of a fenced save: saved, or why not."""

    saved: bool
    held: bool  # False: this node no longer holds the bucket (or too little of it is left)


# The fence's condition: ``node`` holds ``bucket`` with more than ``margin`` s left.
_HELD = ("SELECT 1 FROM push_leases WHERE bucket = %s AND owner = %s "
         "AND expires > clock_timestamp() + make_interval(secs => %s)")


def save_delivery_fenced(cursor: Cursor, node: str, sub_id: str, delivery: PushDelivery,
                         margin: float) -> Fenced:
    """Record delivery state only while ``node`` holds the bucket for ``margin`` s more."""
    held = (bucket_of(sub_id), node, margin)
    cursor.execute(f"{SAVE_DELIVERY} AND EXISTS ({_HELD})",
                   (*delivery_values(sub_id, delivery), *held))
    if cursor.rowcount > 0:
        return Fenced(True, True)
    cursor.execute(_HELD, held)
    return Fenced(False, cursor.fetchone() is not None)
