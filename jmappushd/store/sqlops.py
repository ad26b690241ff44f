"""SQL for the SQLite store: transaction bodies that each take a cursor.

Every function here runs on the store's SQL thread inside one transaction that
``sqlthread.SQLThread.transaction`` opens with ``BEGIN_WRITE`` or ``BEGIN_READ``; they
hold no state, so they can also be tested directly against a plain ``sqlite3`` cursor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from jmappushd.store.records import (
    Account,
    AccountInUse,
    NoSuchUser,
    TokenRecord,
    User,
    UserExists,
)
from jmappushd.store.schema import Cursor

BEGIN_WRITE = "BEGIN IMMEDIATE"
BEGIN_READ = "BEGIN"
_MAX_IN_LIST = 500  # well under SQLite's bound-parameter limit
_USER_COLUMNS = "id, name, password_hash, primary_account_id, created"
_APPEND_LOG = (
    # [{account: {type: state}}, ...]: publish k of the array takes the store's seq + 1 + k.
    # An uncorrelated subquery is evaluated once (SQLite's documented rule), so every row
    # counts from the seq before the statement, which the schema's trigger then moves.
    "INSERT INTO change_log (seq, changed) "
    "SELECT (SELECT seq FROM store_info WHERE id = 1) + 1 + key, value FROM json_each(?)"
)
# Each pair's newest state in the log, upserted in key order (the GROUP BY sorts, so
# the B-tree is walked once, left to right). The bare ``state`` column takes its value
# from the row of ``max(seq)`` (SQLite's documented rule for a lone max()). "WHERE
# true" keeps the upsert clause from being read as part of the SELECT (a documented
# ambiguity); the upsert's WHERE keeps a newer row that another process folded first.
_FOLD = (
    "INSERT INTO states (account_id, type, state, seq) "
    "SELECT a.key, t.key, t.value, max(l.seq) "
    "FROM change_log AS l, json_each(l.changed) AS a, json_each(a.value) AS t "
    "WHERE true GROUP BY a.key, t.key "
    "ON CONFLICT (account_id, type) DO UPDATE SET state = excluded.state, "
    "seq = excluded.seq WHERE excluded.seq > states.seq"
)
# The states of some accounts: folded rows and the log above the fold, newest per pair.
# ``{ids}`` and ``{after}`` are placeholders only; every value is a bound parameter.
_STATES = (
    "SELECT account_id, type, state, max(seq) FROM ("
    "SELECT account_id, type, state, seq FROM states "
    "WHERE account_id IN ({ids}){after} "
    "UNION ALL "
    "SELECT a.key, t.key, t.value, l.seq "
    "FROM change_log AS l, json_each(l.changed) AS a, json_each(a.value) AS t "
    "WHERE a.key IN ({ids}){log_after}"
    ") GROUP BY account_id, type"
)


def _bump_auth(cursor: Cursor) -> None:
    cursor.execute("UPDATE store_info SET auth_generation = auth_generation + 1 WHERE id = 1")


def _user(row: Sequence[Any] | None) -> User | None:
    return None if row is None else User(row[0], row[1], row[2], row[3], row[4])


def _user_row(cursor: Cursor, name: str) -> tuple[str, str] | None:
    cursor.execute("SELECT id, primary_account_id FROM users WHERE name = ?", (name,))
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
    cursor.execute("SELECT 1 FROM users WHERE primary_account_id = ?", (user.primary_account_id,))
    if cursor.fetchone() is not None:
        raise AccountInUse(user.primary_account_id)
    cursor.execute(
        f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?)",  # noqa: S608
        (user.id, user.name, user.password_hash, user.primary_account_id, user.created),
    )
    _bump_auth(cursor)
    return user


def get_user(cursor: Cursor, by_id: bool, value: str) -> User | None:
    column = "id" if by_id else "name"
    cursor.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE {column} = ?", (value,))  # noqa: S608
    return _user(cursor.fetchone())


def list_users(cursor: Cursor) -> list[User]:
    cursor.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name")  # noqa: S608
    return [User(*row) for row in cursor.fetchall()]


def remove_user(cursor: Cursor, name: str) -> bool:
    row = _user_row(cursor, name)
    if row is None:
        return False
    # Explicit deletes rather than relying only on ON DELETE CASCADE, so a
    # connection opened without foreign_keys (a manual sqlite3 shell) changes nothing.
    for table in ("push_subscriptions", "tokens", "grants"):
        cursor.execute(f"DELETE FROM {table} WHERE user_id = ?", (row[0],))  # noqa: S608
    cursor.execute("DELETE FROM users WHERE id = ?", (row[0],))
    _bump_auth(cursor)
    return True


def set_password(cursor: Cursor, name: str, password_hash: str) -> None:
    cursor.execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))
    if cursor.rowcount == 0:
        raise NoSuchUser(name)
    _bump_auth(cursor)


def grant(cursor: Cursor, name: str, account_id: str) -> None:
    user_id, primary = _require_user(cursor, name)
    if account_id == primary:
        return
    cursor.execute(
        "INSERT OR IGNORE INTO grants (user_id, account_id) VALUES (?, ?)", (user_id, account_id)
    )
    if cursor.rowcount > 0:
        _bump_auth(cursor)


def revoke_grant(cursor: Cursor, name: str, account_id: str) -> bool:
    cursor.execute(
        "DELETE FROM grants WHERE account_id = ? "
        "AND user_id = (SELECT id FROM users WHERE name = ?)",
        (account_id, name),
    )
    if cursor.rowcount == 0:
        return False
    _bump_auth(cursor)
    return True


def accounts_for_user(cursor: Cursor, user_id: str) -> list[Account]:
    cursor.execute("SELECT name, primary_account_id FROM users WHERE id = ?", (user_id,))
    row = cursor.fetchone()
    if row is None:
        return []
    name, primary = row
    cursor.execute(
        "SELECT account_id FROM grants WHERE user_id = ? AND account_id != ? ORDER BY account_id",
        (user_id, primary),
    )
    granted = [Account(account_id, account_id, False) for (account_id,) in cursor.fetchall()]
    return [Account(primary, name, True), *granted]


def create_token(cursor: Cursor, name: str, record: TokenRecord, digest: bytes) -> TokenRecord:
    user_id, _ = _require_user(cursor, name)
    cursor.execute(
        "INSERT INTO tokens (id, user_id, digest, label, created) VALUES (?, ?, ?, ?, ?)",
        (record.id, user_id, digest, record.label, record.created),
    )
    _bump_auth(cursor)
    return TokenRecord(record.id, user_id, record.created, record.label)


def find_token(cursor: Cursor, digest: bytes) -> tuple[TokenRecord, User] | None:
    cursor.execute(
        "SELECT t.id, t.created, t.label, u.id, u.name, u.password_hash, "
        "u.primary_account_id, u.created "
        "FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.digest = ?",
        (digest,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    return TokenRecord(row[0], row[3], row[1], row[2]), User(*row[3:])


def list_tokens(cursor: Cursor, name: str) -> list[TokenRecord]:
    cursor.execute(
        "SELECT t.id, t.user_id, t.created, t.label FROM tokens t "
        "JOIN users u ON u.id = t.user_id WHERE u.name = ? ORDER BY t.created, t.id",
        (name,),
    )
    return [TokenRecord(*row) for row in cursor.fetchall()]


def revoke_token(cursor: Cursor, token_id: str) -> bool:
    cursor.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
    if cursor.rowcount == 0:
        return False
    # PS-7: subscriptions belong to the credentials that created them.
    cursor.execute("DELETE FROM push_subscriptions WHERE credential_id = ?", ("token:" + token_id,))
    _bump_auth(cursor)
    return True


def auth_generation(cursor: Cursor) -> int:
    cursor.execute("SELECT auth_generation FROM store_info WHERE id = 1")
    return int(cursor.fetchone()[0])


def position(cursor: Cursor) -> tuple[str, int]:
    cursor.execute("SELECT epoch, seq FROM store_info WHERE id = 1")
    epoch, seq = cursor.fetchone()
    return str(epoch), int(seq)


def record_batch(cursor: Cursor, texts: list[str]) -> list[int]:
    """Give each publish of ``texts`` (its ``changed`` map as JSON) the next seq and
    append them to the change log; returns their seqs.

    One statement, run outside a transaction (:meth:`SQLThread.statement`): SQLite makes
    it atomic and takes the write lock before it reads the seq, so the daemon and
    jmappushctl never hand out the same one. Every statement lets go of the GIL and
    takes it back, a hand-off the reactor thread pays for while it fans out (studies 11
    and 18). The log takes each publish's own JSON as one row (no Python tuple per
    account, no second encoding), and :func:`fold` writes the pairs into ``states``
    later, many publishes at once (study 13). The seq is the row's key, so the last
    one is SQLite's last inserted rowid, read without another step.
    """
    if not texts:
        return []
    cursor.execute(_APPEND_LOG, ("[" + ",".join(texts) + "]",))
    last = cursor.lastrowid
    if last is None:
        raise RuntimeError("SQLite reported no row for an appended publish")
    return list(range(last - len(texts) + 1, last + 1))


def fold(cursor: Cursor) -> int:
    """Fold the whole change log into ``states`` and empty it; returns the publishes
    folded. The log is read and deleted in one write transaction, so a publish of
    another process (which holds the same lock to append) is either folded or kept."""
    cursor.execute(_FOLD)
    cursor.execute("DELETE FROM change_log")
    return int(cursor.rowcount)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    # Each chunk's ids are bound twice (states, then the log).
    for start in range(0, len(items), _MAX_IN_LIST // 2):
        yield items[start : start + _MAX_IN_LIST // 2]


def states(cursor: Cursor, account_ids: list[str], after: int | None) -> dict[str, dict[str, str]]:
    """Each pair's newest state among ``account_ids`` (only those above seq ``after``
    when given): ``states`` overlaid with the log not folded yet."""
    result: dict[str, dict[str, str]] = {}
    for chunk in _chunks(account_ids):
        ids = ", ".join("?" * len(chunk))
        if after is None:
            sql = _STATES.format(ids=ids, after="", log_after="")
            params: list[Any] = [*chunk, *chunk]
        else:
            sql = _STATES.format(ids=ids, after=" AND seq > ?", log_after=" AND l.seq > ?")
            params = [*chunk, after, *chunk, after]
        cursor.execute(sql, params)
        for account_id, type_name, state, _ in cursor.fetchall():
            result.setdefault(account_id, {})[type_name] = state
    return result


def get_meta(cursor: Cursor, key: str) -> str | None:
    cursor.execute("SELECT value FROM meta WHERE key = ?", (key,))
    row = cursor.fetchone()
    return None if row is None else str(row[0])


def set_meta(cursor: Cursor, key: str, value: str) -> None:
    cursor.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def add_meta(cursor: Cursor, key: str, value: str) -> str:
    """Insert unless present, then read back, in one write transaction (IMetadataStore)."""
    cursor.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                   (key, value))
    cursor.execute("SELECT value FROM meta WHERE key = ?", (key,))
    return str(cursor.fetchone()[0])
