"""SQL for push subscriptions in PostgreSQL: transaction bodies that each take a cursor.

The per-user quota and creation rate (PS-19) are enforced for every daemon on the
database at once: a creation first locks its user's row, so two nodes creating for
one user count one after the other. The rate's sliding window is the
``push_creations`` table: one row per creation, the user's rows older than the window
deleted by their next creation, and up to :data:`SWEEP_ROWS` old rows of anybody
(not locked by another creation) swept by every creation, so the table holds about
the last window's creations. A deleted row's URL and keys stay in the table's pages until
VACUUM reuses them (PostgreSQL has no ``secure_delete``); autovacuum does that.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jmappushd.store.pgops import Cursor
from jmappushd.store.records import (
    CreationRate,
    NoSuchUser,
    PushDelivery,
    PushQuotaExceeded,
    PushRateLimited,
    PushSubscription,
)
from jmappushd.store.rules import check_kept_keys, check_updatable

# The channel a transaction that creates, changes or deletes a push subscription
# notifies with its id: the owner of its bucket (cluster mode) reloads it. A wake-up,
# never the data; a node that missed some reloads its buckets when it reconnects.
PUSH_CHANNEL = "jmappushd_push"

_COLUMNS = (
    "id, user_id, credential_id, device_client_id, url, keys_p256dh, keys_auth, "
    "verification_code, verified, client_verification_code, expires, types, vapid_key_id, "
    "created, pending, attempts, next_attempt, failing_since, last_sent_seq, dropped, "
    "backoff_until"
)
_SELECT = f"SELECT {_COLUMNS} FROM push_subscriptions"  # noqa: S608 - constant text
_ORDER = " ORDER BY created, id COLLATE \"C\""
SWEEP_ROWS = 100


def _types_text(types: Sequence[str] | None) -> str | None:
    return None if types is None else json.dumps(list(types))


def _delivery(row: Sequence[Any]) -> PushDelivery:
    pending = json.loads(row[14]) if row[14] else {}
    return PushDelivery(pending, int(row[15]), row[16], row[17], int(row[18]), int(row[19]),
                        row[20])


def _record(row: Sequence[Any]) -> PushSubscription:
    types = None if row[11] is None else tuple(json.loads(row[11]))
    return PushSubscription(
        id=row[0], user_id=row[1], credential_id=row[2], device_client_id=row[3] or "",
        url=row[4], keys_p256dh=row[5], keys_auth=row[6], verification_code=row[7] or "",
        verified=bool(row[8]), client_verification_code=row[9],
        # A row without expiry (written by hand) counts as expired, so it is cleaned up.
        expires=0.0 if row[10] is None else float(row[10]),
        types=types, vapid_key_id=row[12] or "", created=float(row[13]),
        delivery=_delivery(row),
    )


def create(cursor: Cursor, sub: PushSubscription, max_per_user: int,
           rate: CreationRate | None = None) -> PushSubscription:
    """Insert ``sub`` unless its user already has ``max_per_user`` (PS-19, all credentials)
    or, with ``rate``, made ``rate.limit`` creations in the window before ``sub.created``."""
    cursor.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (sub.user_id,))
    if cursor.fetchone() is None:
        raise NoSuchUser(sub.user_id)
    if rate is not None:
        _check_rate(cursor, sub.user_id, sub.created, rate)
    cursor.execute("SELECT count(*) FROM push_subscriptions WHERE user_id = %s", (sub.user_id,))
    row = cursor.fetchone()
    if row is not None and int(row[0]) >= max_per_user:
        raise PushQuotaExceeded(max_per_user)
    d = sub.delivery
    marks = ", ".join(["%s"] * 21)
    cursor.execute(
        f"INSERT INTO push_subscriptions ({_COLUMNS}) VALUES ({marks})",  # noqa: S608
        (sub.id, sub.user_id, sub.credential_id, sub.device_client_id, sub.url,
         sub.keys_p256dh, sub.keys_auth, sub.verification_code, sub.verified,
         sub.client_verification_code, sub.expires, _types_text(sub.types), sub.vapid_key_id,
         sub.created, json.dumps(d.pending) if d.pending else None, d.attempts,
         d.next_attempt, d.failing_since, d.last_sent_seq, d.dropped, d.backoff_until))
    if rate is not None:
        cursor.execute("INSERT INTO push_creations (user_id, at) VALUES (%s, %s)",
                       (sub.user_id, sub.created))
    _touched(cursor, sub.id)
    return sub


def _touched(cursor: Cursor, sub_id: str) -> None:
    cursor.execute("SELECT pg_notify(%s, %s)", (PUSH_CHANNEL, sub_id))


def _check_rate(cursor: Cursor, user_id: str, now: float, rate: CreationRate) -> None:
    """Under the user's row lock: prune the window, refuse a full one (nothing counted)."""
    cutoff = now - rate.window
    cursor.execute("DELETE FROM push_creations WHERE user_id = %s AND at <= %s",
                   (user_id, cutoff))
    # Other users' old rows: a bounded batch, skipping rows a creation holds, so no wait.
    cursor.execute(
        "DELETE FROM push_creations WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM push_creations WHERE at <= %s LIMIT %s FOR UPDATE SKIP LOCKED))",
        (cutoff, SWEEP_ROWS))
    cursor.execute("SELECT count(*) FROM push_creations WHERE user_id = %s", (user_id,))
    row = cursor.fetchone()
    if row is not None and int(row[0]) >= rate.limit:
        raise PushRateLimited(rate)


def by_credential(cursor: Cursor, credential_id: str) -> list[PushSubscription]:
    cursor.execute(_SELECT + " WHERE credential_id = %s" + _ORDER, (credential_id,))
    return [_record(row) for row in cursor.fetchall()]


def all_subscriptions(cursor: Cursor) -> list[PushSubscription]:
    cursor.execute(_SELECT + _ORDER)
    return [_record(row) for row in cursor.fetchall()]


def ids(cursor: Cursor) -> set[str]:
    cursor.execute("SELECT id FROM push_subscriptions")
    return {row[0] for row in cursor.fetchall()}


def update(cursor: Cursor, sub_id: str, changes: Mapping[str, Any]) -> bool:
    """Change updatable columns; ``types`` is a sequence or None. False if the id is gone."""
    check_updatable(changes)
    if not changes:
        cursor.execute("SELECT 1 FROM push_subscriptions WHERE id = %s", (sub_id,))
        return cursor.fetchone() is not None
    values = [
        _types_text(v) if k == "types" else bool(v) if k == "verified" else v
        for k, v in changes.items()
    ]
    assignments = ", ".join(f"{k} = %s" for k in changes)  # keys checked against UPDATABLE
    cursor.execute(f"UPDATE push_subscriptions SET {assignments} WHERE id = %s",  # noqa: S608
                   (*values, sub_id))
    if cursor.rowcount == 0:
        return False
    _touched(cursor, sub_id)
    return True


# Records a subscription's delivery state; the lease fence (pgleases) adds a condition.
SAVE_DELIVERY = (
    "UPDATE push_subscriptions SET pending = %s, attempts = %s, next_attempt = %s, "
    "failing_since = %s, last_sent_seq = %s, dropped = %s, backoff_until = %s WHERE id = %s"
)


def delivery_values(sub_id: str, d: PushDelivery) -> tuple[Any, ...]:
    """The parameters of :data:`SAVE_DELIVERY`."""
    return (json.dumps(d.pending) if d.pending else None, d.attempts, d.next_attempt,
            d.failing_since, d.last_sent_seq, d.dropped, d.backoff_until, sub_id)


def save_delivery(cursor: Cursor, sub_id: str, d: PushDelivery) -> bool:
    cursor.execute(SAVE_DELIVERY, delivery_values(sub_id, d))
    return cursor.rowcount > 0


def delete(cursor: Cursor, sub_id: str) -> bool:
    cursor.execute("DELETE FROM push_subscriptions WHERE id = %s", (sub_id,))
    if cursor.rowcount == 0:
        return False
    _touched(cursor, sub_id)
    return True


def delete_other_keys(cursor: Cursor, key_ids: list[str]) -> list[str]:
    """Destroy subscriptions tied to any VAPID key not in ``key_ids`` (VAPID-13, C-V-2)."""
    kept = check_kept_keys(key_ids)
    cursor.execute("DELETE FROM push_subscriptions "
                   "WHERE vapid_key_id IS NULL OR NOT (vapid_key_id = ANY(%s)) RETURNING id",
                   (kept,))
    gone = sorted(row[0] for row in cursor.fetchall())
    for sub_id in gone:
        _touched(cursor, sub_id)
    return gone
