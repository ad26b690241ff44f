"""SQL for push subscriptions: transaction bodies that each take a cursor.

Like :mod:`jmappushd.store.sqlops`, every function runs on the store's pool thread
inside one transaction. Deleting a row is how a subscription is destroyed; the
connection runs with ``secure_delete`` so its URL and keys do not linger in the
file (PS-8).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jmappushd.store.records import PushDelivery, PushQuotaExceeded, PushSubscription
from jmappushd.store.rules import check_kept_keys, check_updatable
from jmappushd.store.schema import Cursor

_COLUMNS = (
    "id, user_id, credential_id, device_client_id, url, keys_p256dh, keys_auth, "
    "verification_code, verified, client_verification_code, expires, types, vapid_key_id, "
    "created, pending, attempts, next_attempt, failing_since, last_sent_seq, dropped, "
    "backoff_until"
)
_SELECT = f"SELECT {_COLUMNS} FROM push_subscriptions"  # noqa: S608 - constant text


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


def create(cursor: Cursor, sub: PushSubscription, max_per_user: int) -> PushSubscription:
    """Insert ``sub`` unless its user already has ``max_per_user`` (PS-19, all credentials)."""
    cursor.execute("SELECT count(*) FROM push_subscriptions WHERE user_id = ?", (sub.user_id,))
    if int(cursor.fetchone()[0]) >= max_per_user:
        raise PushQuotaExceeded(max_per_user)
    d = sub.delivery
    cursor.execute(
        f"INSERT INTO push_subscriptions ({_COLUMNS}) "  # noqa: S608 - constant text
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sub.id, sub.user_id, sub.credential_id, sub.device_client_id, sub.url,
         sub.keys_p256dh, sub.keys_auth, sub.verification_code, int(sub.verified),
         sub.client_verification_code, sub.expires, _types_text(sub.types), sub.vapid_key_id,
         sub.created, json.dumps(d.pending) if d.pending else None, d.attempts,
         d.next_attempt, d.failing_since, d.last_sent_seq, d.dropped, d.backoff_until),
    )
    return sub


def by_credential(cursor: Cursor, credential_id: str) -> list[PushSubscription]:
    cursor.execute(_SELECT + " WHERE credential_id = ? ORDER BY created, id", (credential_id,))
    return [_record(row) for row in cursor.fetchall()]


def all_subscriptions(cursor: Cursor) -> list[PushSubscription]:
    cursor.execute(_SELECT + " ORDER BY created, id")
    return [_record(row) for row in cursor.fetchall()]


def ids(cursor: Cursor) -> set[str]:
    cursor.execute("SELECT id FROM push_subscriptions")
    return {row[0] for row in cursor.fetchall()}


def update(cursor: Cursor, sub_id: str, changes: Mapping[str, Any]) -> bool:
    """Change updatable columns; ``types`` is a sequence or None. False if the id is gone."""
    check_updatable(changes)
    if not changes:
        cursor.execute("SELECT 1 FROM push_subscriptions WHERE id = ?", (sub_id,))
        return cursor.fetchone() is not None
    values = [
        _types_text(v) if k == "types" else int(v) if k == "verified" else v
        for k, v in changes.items()
    ]
    assignments = ", ".join(f"{k} = ?" for k in changes)  # keys checked against UPDATABLE
    cursor.execute(f"UPDATE push_subscriptions SET {assignments} WHERE id = ?",  # noqa: S608
                   (*values, sub_id))
    return cursor.rowcount > 0


def save_delivery(cursor: Cursor, sub_id: str, d: PushDelivery) -> bool:
    cursor.execute(
        "UPDATE push_subscriptions SET pending = ?, attempts = ?, next_attempt = ?, "
        "failing_since = ?, last_sent_seq = ?, dropped = ?, backoff_until = ? WHERE id = ?",
        (json.dumps(d.pending) if d.pending else None, d.attempts, d.next_attempt,
         d.failing_since, d.last_sent_seq, d.dropped, d.backoff_until, sub_id),
    )
    return cursor.rowcount > 0


def delete(cursor: Cursor, sub_id: str) -> bool:
    cursor.execute("DELETE FROM push_subscriptions WHERE id = ?", (sub_id,))
    return cursor.rowcount > 0


def delete_other_keys(cursor: Cursor, key_ids: list[str]) -> list[str]:
    """Destroy subscriptions tied to any VAPID key not in ``key_ids`` (VAPID-13, C-V-2)."""
    key_ids = check_kept_keys(key_ids)
    marks = ", ".join("?" * len(key_ids))
    # Only "?" placeholders are formatted in; the key ids are bound parameters.
    where = f"vapid_key_id IS NULL OR vapid_key_id NOT IN ({marks})"
    cursor.execute(f"SELECT id FROM push_subscriptions WHERE {where}", key_ids)  # noqa: S608
    gone = [row[0] for row in cursor.fetchall()]
    cursor.execute(f"DELETE FROM push_subscriptions WHERE {where}", key_ids)  # noqa: S608
    return gone
