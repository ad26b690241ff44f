"""SQL for the PostgreSQL store: transaction bodies that each take a cursor.

Each function runs on a pool thread inside one transaction opened by the store
(:mod:`jmappushd.store.postgresql`); they hold no state. Writes run at READ
COMMITTED, where an ``UPDATE`` that waited for another transaction's row lock
works on the row as that one committed it: that is what makes the counter rows
(``change_seq``, ``store_info``) serialise writers across processes and nodes.
Races that a check-then-insert cannot close across processes (a user name taken
meanwhile) are left to the unique constraints and mapped to the same errors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors

from jmappushd.store.records import (
    Account,
    AccountInUse,
    NoSuchUser,
    TokenRecord,
    User,
    UserExists,
)
from jmappushd.store.rules import StateRows

Cursor = psycopg.Cursor[tuple[Any, ...]]

# The channel each publishing transaction notifies with the last seq it recorded
# (delivered at commit, only to sessions that LISTEN): a cluster node's wake-up to
# read the log after its watermark. A notification is never the change itself.
CHANGES_CHANNEL = "jmappushd_changes"

# The change log keeps at least this many newest entries; older ones are deleted by
# the publish that crosses a multiple of PRUNE_EVERY (one DELETE in a thousand
# publishes, no timer). Catch-up reads ``states``, never the log, so pruning costs
# no resumption token; only a node further behind than this must resync.
LOG_KEEP = 100_000
PRUNE_EVERY = 1_000

_USER_COLUMNS = "id, name, password_hash, primary_account_id, created"
# A publish batch in one statement. ``c`` takes the counter row's lock and the batch's
# seqs; ``o`` is a publish's 1-based place in the batch. The arrays go in binary (%b):
# psycopg escapes every element of a text-format array in Python, which cost more than
# the rest of the daemon's side of the statement. The DELETE runs only for the publish
# that crosses a multiple of PRUNE_EVERY (its guard is evaluated once, not per row),
# and the notification is one per batch, never per change.
_RECORD = """
WITH c AS (UPDATE change_seq SET seq = seq + %(n)s WHERE id = 1 RETURNING seq),
s AS (INSERT INTO states (account_id, type, state, seq)
      SELECT u.a, u.t, u.s, c.seq - %(n)s + u.o
      FROM c, unnest(%(a)b::text[], %(t)b::text[], %(s)b::text[], %(o)b::bigint[])
           AS u(a, t, s, o)
      ON CONFLICT (account_id, type) DO UPDATE SET state = excluded.state, seq = excluded.seq),
l AS (INSERT INTO changes (seq, changed)
      SELECT c.seq - %(n)s + u.o, u.x FROM c, unnest(%(x)b::text[]) WITH ORDINALITY AS u(x, o)),
p AS (DELETE FROM changes WHERE seq <= (SELECT seq FROM c) - %(keep)s
      AND (SELECT seq FROM c) / %(every)s <> ((SELECT seq FROM c) - %(n)s) / %(every)s)
SELECT c.seq, pg_notify(%(channel)s, c.seq::text) FROM c
"""


def _bump_auth(cursor: Cursor) -> None:
    cursor.execute("UPDATE store_info SET auth_generation = auth_generation + 1 WHERE id = 1")


def _user_row(cursor: Cursor, name: str) -> tuple[str, str] | None:
    cursor.execute("SELECT id, primary_account_id FROM users WHERE name = %s", (name,))
    row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


def _require_user(cursor: Cursor, name: str) -> tuple[str, str]:
    row = _user_row(cursor, name)
    if row is None:
        raise NoSuchUser(name)
    return row


def add_user(cursor: Cursor, user: User) -> User:
    if _user_row(cursor, user.name) is not None:
        raise UserExists(user.name)
    cursor.execute("SELECT 1 FROM users WHERE primary_account_id = %s",
                   (user.primary_account_id,))
    if cursor.fetchone() is not None:
        raise AccountInUse(user.primary_account_id)
    try:
        cursor.execute(
            f"INSERT INTO users ({_USER_COLUMNS}) VALUES (%s, %s, %s, %s, %s)",  # noqa: S608
            (user.id, user.name, user.password_hash, user.primary_account_id, user.created))
    except errors.UniqueViolation as exc:  # another process won the race
        if exc.diag.constraint_name == "users_name_key":
            raise UserExists(user.name) from None
        raise AccountInUse(user.primary_account_id) from None
    _bump_auth(cursor)
    return user


def get_user(cursor: Cursor, by_id: bool, value: str) -> User | None:
    column = "id" if by_id else "name"
    cursor.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE {column} = %s",  # noqa: S608
                   (value,))
    row = cursor.fetchone()
    return None if row is None else User(*row)


def list_users(cursor: Cursor) -> list[User]:
    cursor.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name COLLATE \"C\"")  # noqa: S608
    return [User(*row) for row in cursor.fetchall()]


def remove_user(cursor: Cursor, name: str) -> bool:
    row = _user_row(cursor, name)
    if row is None:
        return False
    for table in ("push_subscriptions", "tokens", "grants"):
        cursor.execute(f"DELETE FROM {table} WHERE user_id = %s", (row[0],))  # noqa: S608
    cursor.execute("DELETE FROM users WHERE id = %s", (row[0],))
    _bump_auth(cursor)
    return True


def set_password(cursor: Cursor, name: str, password_hash: str) -> None:
    cursor.execute("UPDATE users SET password_hash = %s WHERE name = %s", (password_hash, name))
    if cursor.rowcount == 0:
        raise NoSuchUser(name)
    _bump_auth(cursor)


def grant(cursor: Cursor, name: str, account_id: str) -> None:
    user_id, primary = _require_user(cursor, name)
    if account_id == primary:
        return
    cursor.execute("INSERT INTO grants (user_id, account_id) VALUES (%s, %s) "
                   "ON CONFLICT DO NOTHING", (user_id, account_id))
    if cursor.rowcount > 0:
        _bump_auth(cursor)


def revoke_grant(cursor: Cursor, name: str, account_id: str) -> bool:
    cursor.execute(
        "DELETE FROM grants WHERE account_id = %s "
        "AND user_id = (SELECT id FROM users WHERE name = %s)", (account_id, name))
    if cursor.rowcount == 0:
        return False
    _bump_auth(cursor)
    return True


def accounts_for_user(cursor: Cursor, user_id: str) -> list[Account]:
    cursor.execute("SELECT name, primary_account_id FROM users WHERE id = %s", (user_id,))
    row = cursor.fetchone()
    if row is None:
        return []
    name, primary = row
    cursor.execute(
        "SELECT account_id FROM grants WHERE user_id = %s AND account_id <> %s "
        "ORDER BY account_id COLLATE \"C\"", (user_id, primary))
    granted = [Account(account_id, account_id, False) for (account_id,) in cursor.fetchall()]
    return [Account(primary, name, True), *granted]


def create_token(cursor: Cursor, name: str, record: TokenRecord, digest: bytes) -> TokenRecord:
    user_id, _ = _require_user(cursor, name)
    cursor.execute(
        "INSERT INTO tokens (id, user_id, digest, label, created) VALUES (%s, %s, %s, %s, %s)",
        (record.id, user_id, digest, record.label, record.created))
    _bump_auth(cursor)
    return TokenRecord(record.id, user_id, record.created, record.label)


def find_token(cursor: Cursor, digest: bytes) -> tuple[TokenRecord, User] | None:
    cursor.execute(
        "SELECT t.id, t.created, t.label, u.id, u.name, u.password_hash, "
        "u.primary_account_id, u.created "
        "FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.digest = %s", (digest,))
    row = cursor.fetchone()
    if row is None:
        return None
    return TokenRecord(row[0], row[3], row[1], row[2]), User(*row[3:])


def list_tokens(cursor: Cursor, name: str) -> list[TokenRecord]:
    cursor.execute(
        "SELECT t.id, t.user_id, t.created, t.label FROM tokens t "
        "JOIN users u ON u.id = t.user_id WHERE u.name = %s "
        "ORDER BY t.created, t.id COLLATE \"C\"", (name,))
    return [TokenRecord(*row) for row in cursor.fetchall()]


def revoke_token(cursor: Cursor, token_id: str) -> bool:
    cursor.execute("DELETE FROM tokens WHERE id = %s", (token_id,))
    if cursor.rowcount == 0:
        return False
    # PS-7: subscriptions belong to the credentials that created them.
    cursor.execute("DELETE FROM push_subscriptions WHERE credential_id = %s",
                   ("token:" + token_id,))
    _bump_auth(cursor)
    return True


def auth_generation(cursor: Cursor) -> int:
    cursor.execute("SELECT auth_generation FROM store_info WHERE id = 1")
    row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def position(cursor: Cursor) -> tuple[str, int]:
    cursor.execute("SELECT i.epoch, c.seq FROM store_info i, change_seq c "
                   "WHERE i.id = 1 AND c.id = 1")
    row = cursor.fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def record_batch(cursor: Cursor, batch: list[tuple[StateRows, str]]) -> list[int]:
    """Record publishes (rows and their JSON) under the next seqs: one statement, one
    round trip between the store's BEGIN and COMMIT, whatever the batch size.

    The counter row is updated first (every other part reads its new value): its lock
    is held until this transaction ends, so a concurrent publisher (another node,
    ``jmappushctl``) waits there and its seqs follow ours, in commit order.
    """
    n = len(batch)
    if n == 1:
        # One publish names each (account, type) once: its rows go as they are.
        rows, _ = batch[0]
        accounts, types, states_ = (list(column) for column in zip(*rows, strict=True))
        offsets = [1] * len(rows)
    else:
        # An upsert may touch a row only once per statement: newest wins.
        newest: dict[tuple[str, str], tuple[str, int]] = {}
        for offset, (rows, _) in enumerate(batch, 1):
            for account_id, type_name, state in rows:
                newest[(account_id, type_name)] = (state, offset)
        accounts, types = [a for a, _ in newest], [t for _, t in newest]
        states_, offsets = [s for s, _ in newest.values()], [o for _, o in newest.values()]
    cursor.execute(_RECORD, {"n": n, "a": accounts, "t": types, "s": states_, "o": offsets,
                             "x": [text for _, text in batch], "keep": LOG_KEEP,
                             "every": PRUNE_EVERY, "channel": CHANGES_CHANNEL})
    row = cursor.fetchone()
    assert row is not None
    last = int(row[0])
    return list(range(last - n + 1, last + 1))


def changes_after(cursor: Cursor, seq: int, limit: int
                  ) -> list[tuple[int, dict[str, dict[str, str]]]]:
    cursor.execute("SELECT seq, changed FROM changes WHERE seq > %s ORDER BY seq LIMIT %s",
                   (seq, limit))
    return [(int(s), json.loads(text)) for s, text in cursor.fetchall()]


def states_changed(cursor: Cursor, after: int, upto: int) -> dict[str, dict[str, str]]:
    """The newest state of every (account, type) whose last change has a seq in
    ``(after, upto]``, across all accounts: what a node behind the pruned log horizon
    missed there (a pair changed again later is in the log above ``upto``)."""
    cursor.execute("SELECT account_id, type, state FROM states WHERE seq > %s AND seq <= %s",
                   (after, upto))
    result: dict[str, dict[str, str]] = {}
    for account_id, type_name, state in cursor.fetchall():
        result.setdefault(account_id, {})[type_name] = state
    return result


def states(cursor: Cursor, account_ids: Sequence[str], after: int | None
           ) -> dict[str, dict[str, str]]:
    if after is None:
        cursor.execute("SELECT account_id, type, state FROM states WHERE account_id = ANY(%s)",
                       (list(account_ids),))
    else:
        cursor.execute("SELECT account_id, type, state FROM states "
                       "WHERE account_id = ANY(%s) AND seq > %s", (list(account_ids), after))
    result: dict[str, dict[str, str]] = {}
    for account_id, type_name, state in cursor.fetchall():
        result.setdefault(account_id, {})[type_name] = state
    return result


def get_meta(cursor: Cursor, key: str) -> str | None:
    cursor.execute("SELECT value FROM meta WHERE key = %s", (key,))
    row = cursor.fetchone()
    return None if row is None else str(row[0])


def set_meta(cursor: Cursor, key: str, value: str) -> None:
    cursor.execute("INSERT INTO meta (key, value) VALUES (%s, %s) "
                   "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


def add_meta(cursor: Cursor, key: str, value: str) -> str:
    """Insert unless present, then read back: at READ COMMITTED the insert waits for a
    concurrent one of the same key and then does nothing, and the read sees the winner."""
    cursor.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                   (key, value))
    cursor.execute("SELECT value FROM meta WHERE key = %s", (key,))
    row = cursor.fetchone()
    assert row is not None
    return str(row[0])
