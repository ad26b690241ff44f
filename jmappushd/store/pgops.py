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

from jmappushd.store.pgtail import FoldRows
from jmappushd.store.records import (
    Account,
    AccountInUse,
    NoSuchUser,
    TokenRecord,
    User,
    UserExists,
)

Cursor = psycopg.Cursor[tuple[Any, ...]]
LoggedChange = dict[str, dict[str, str]]
# What a catch-up read answers: fold mark, log top, folded states, unfolded log entries.
StatesRead = tuple[int, int, dict[str, dict[str, str]], list[tuple[int, LoggedChange]]]
_PAGE = 10_000  # log entries per read inside one snapshot

# The channel each publishing transaction notifies with the last seq it recorded
# (delivered at commit, only to sessions that LISTEN): a cluster node's wake-up to
# read the log after its watermark. A notification is never the change itself.
CHANGES_CHANNEL = "jmappushd_changes"

# The change log keeps at least this many newest entries; the fold that crosses a
# multiple of PRUNE_EVERY deletes older ones, never one above the fold mark (the log is
# the truth ``states`` is folded from). Only a node further behind than this must
# resync from ``states``.
LOG_KEEP = 100_000
PRUNE_EVERY = 1_000

_USER_COLUMNS = "id, name, password_hash, primary_account_id, created"
# A publish batch in one statement: ``c`` takes the counter row's lock and the batch's
# seqs, ``l`` appends one log row per publish (``o`` is its 1-based place in the batch),
# and the notification is one per batch, never per change. ``states`` is not touched:
# the fold (below) writes each pair's newest state later, once per fold round. The
# array goes in binary (%b): psycopg escapes every element of a text-format array in
# Python.
_RECORD = """
WITH c AS (UPDATE change_seq SET seq = seq + %(n)s WHERE id = 1 RETURNING seq),
l AS (INSERT INTO changes (seq, changed)
      SELECT c.seq - %(n)s + u.o, u.x FROM c, unnest(%(x)b::text[]) WITH ORDINALITY AS u(x, o))
SELECT c.seq, pg_notify(%(channel)s, c.seq::text) FROM c
"""
# The same for the usual batch of one publish: its JSON goes as a plain text parameter
# (dumping a one-element array cost the client more than the rest of the statement).
_RECORD_ONE = """
WITH c AS (UPDATE change_seq SET seq = seq + 1 WHERE id = 1 RETURNING seq),
l AS (INSERT INTO changes (seq, changed) SELECT c.seq, %(x)s FROM c)
SELECT c.seq, pg_notify(%(channel)s, c.seq::text) FROM c
"""
# The fold: each pair's newest state from the log entries above the mark. A row newer
# than the one folded (another node folded further first) is left alone.
_FOLD = """
INSERT INTO states (account_id, type, state, seq)
SELECT * FROM unnest(%(a)b::text[], %(t)b::text[], %(s)b::text[], %(q)b::bigint[])
ON CONFLICT (account_id, type) DO UPDATE SET state = excluded.state, seq = excluded.seq
WHERE states.seq < excluded.seq
"""
# The states of some accounts with the fold mark and the log's top, in one snapshot; a
# row with the marks comes back even when no state matches.
_STATES = """
SELECT f.folded, c.seq, s.account_id, s.type, s.state
FROM change_fold f CROSS JOIN change_seq c
LEFT JOIN states s ON s.account_id = ANY(%(a)s) {condition}
WHERE f.id = 1 AND c.id = 1
"""
_STATES_ALL = _STATES.format(condition="")
_STATES_AFTER = _STATES.format(condition="AND s.seq > %(after)s")


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


def record_batch(cursor: Cursor, texts: list[str]) -> list[int]:
    """Append publishes (each as its JSON) to the log under the next seqs: one
    statement, its own transaction (the store runs it without BEGIN/COMMIT).

    The counter row is updated first (every other part reads its new value): its lock
    is held until this transaction ends, so a concurrent publisher (another node,
    ``jmappushctl``) waits there and its seqs follow ours, in commit order.
    """
    n = len(texts)
    if n == 1:
        cursor.execute(_RECORD_ONE, {"x": texts[0], "channel": CHANGES_CHANNEL})
    else:
        cursor.execute(_RECORD, {"n": n, "x": texts, "channel": CHANGES_CHANNEL})
    row = cursor.fetchone()
    assert row is not None
    last = int(row[0])
    return list(range(last - n + 1, last + 1))


def fold(cursor: Cursor, rows: FoldRows) -> int:
    """Fold ``rows`` (the newest states of the log entries in ``(rows.base, rows.upto]``)
    into ``states`` and move the mark to ``rows.upto``; returns the mark now.

    The mark's row lock makes folds of several nodes take turns; a fold that finds the
    mark at or past its ``upto`` writes nothing. Every ``PRUNE_EVERY`` seqs the fold also
    prunes the log below both the new mark and the kept horizon.
    """
    cursor.execute("SELECT folded FROM change_fold WHERE id = 1 FOR UPDATE")
    found = cursor.fetchone()
    assert found is not None
    folded = int(found[0])
    if folded >= rows.upto:
        return folded
    todo = rows.above(folded)
    if todo:
        cursor.execute(_FOLD, {"a": todo.accounts, "t": todo.types, "s": todo.states,
                               "q": todo.seqs})
    cursor.execute("UPDATE change_fold SET folded = %s WHERE id = 1", (rows.upto,))
    if rows.upto // PRUNE_EVERY != folded // PRUNE_EVERY:
        cursor.execute("DELETE FROM changes WHERE seq <= least(%s, "
                       "(SELECT seq FROM change_seq WHERE id = 1) - %s)",
                       (rows.upto, LOG_KEEP))
    return rows.upto


def unfolded(cursor: Cursor) -> tuple[int, int, list[tuple[int, LoggedChange]]]:
    """``(fold mark, log top, the log entries above the mark)`` from one snapshot: what a
    store object loads into its tail at open."""
    cursor.execute("SELECT f.folded, c.seq FROM change_fold f, change_seq c "
                   "WHERE f.id = 1 AND c.id = 1")
    row = cursor.fetchone()
    assert row is not None
    folded, top = int(row[0]), int(row[1])
    return folded, top, _log_upto(cursor, folded, top)


def changes_after(cursor: Cursor, seq: int, limit: int) -> list[tuple[int, LoggedChange]]:
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


def states(cursor: Cursor, account_ids: Sequence[str], after: int | None, since: int
           ) -> StatesRead:
    """``(fold mark, log top, folded states, log entries)`` from one snapshot: the folded
    states of ``account_ids`` changed after ``after``, and the log entries above both
    ``since`` (what the caller holds up to) and the mark, which the store lays over
    them."""
    if after is None:
        cursor.execute(_STATES_ALL, {"a": list(account_ids)})
    else:
        cursor.execute(_STATES_AFTER, {"a": list(account_ids), "after": after})
    rows = cursor.fetchall()
    result: dict[str, dict[str, str]] = {}
    for _, _, account_id, type_name, state in rows:
        if account_id is not None:
            result.setdefault(account_id, {})[type_name] = state
    folded, top = int(rows[0][0]), int(rows[0][1])
    return folded, top, result, _log_upto(cursor, max(since, folded), top)


def _log_upto(cursor: Cursor, after: int, top: int) -> list[tuple[int, LoggedChange]]:
    """Every log entry in ``(after, top]``, read in pages (inside one snapshot)."""
    entries: list[tuple[int, LoggedChange]] = []
    while after < top:
        page = changes_after(cursor, after, _PAGE)
        if not page:
            break
        entries += page
        after = page[-1][0]
    return entries


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
