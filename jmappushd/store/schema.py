"""SQLite schema: ordered migrations and the per-connection settings.

The schema version lives in ``PRAGMA user_version``: migration ``i`` (0-based)
brings the file to version ``i + 1``. Each migration runs in the same write
transaction as its version bump, so a crash leaves the file at a whole version.
Never edit a released migration; append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

from jmappushd.store.records import SchemaTooNew


class Cursor(Protocol):
    """The part of a DB-API cursor the transaction bodies use."""

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


_V1 = """
CREATE TABLE store_info (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    auth_generation INTEGER NOT NULL
);
INSERT INTO store_info (id, epoch, seq, auth_generation)
    VALUES (1, 'e' || lower(hex(randomblob(8))), 0, 0);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    primary_account_id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE grants (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    PRIMARY KEY (user_id, account_id)
) WITHOUT ROWID;
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    digest BLOB NOT NULL UNIQUE,
    label TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE INDEX tokens_by_user ON tokens (user_id);
CREATE TABLE states (
    account_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (account_id, type)
) WITHOUT ROWID;
CREATE INDEX states_by_seq ON states (seq);
CREATE TABLE push_subscriptions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL,
    device_client_id TEXT,
    url TEXT NOT NULL,
    keys_p256dh TEXT,
    keys_auth TEXT,
    verification_code TEXT,
    verified INTEGER NOT NULL DEFAULT 0,
    client_verification_code TEXT,
    expires REAL,
    types TEXT,
    vapid_key_id TEXT,
    created REAL NOT NULL,
    pending TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL,
    failing_since REAL,
    last_sent_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX push_subscriptions_by_user ON push_subscriptions (user_id);
CREATE INDEX push_subscriptions_by_credential ON push_subscriptions (credential_id);
"""

# Catch-up reads states by account (the primary key) and filters on seq; nothing
# reads by seq alone, and keeping this index up to date cost a third of every
# publish's write.
_V2 = """
DROP INDEX IF EXISTS states_by_seq;
"""

# Web Push back-off between notifications: dropped notifications in a row, and when
# the next one may start.
_V3 = """
ALTER TABLE push_subscriptions ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE push_subscriptions ADD COLUMN backoff_until REAL;
"""

# Issue 16: a publish appends its changed map whole, one row per publish, and the
# store folds the log into ``states`` (each pair's newest state) every few thousand
# states, so a publish writes a page or two instead of one ``states`` page per account.
# Readers see ``states`` overlaid with the rows not folded yet (sqlops.states).
_V4 = """
CREATE TABLE change_log (
    seq INTEGER PRIMARY KEY,
    changed TEXT NOT NULL
);
"""

# Issue 16: a publish is one INSERT, atomic on its own (no BEGIN, UPDATE, COMMIT of its
# own): it reads the store's seq in the statement, and this trigger moves the seq past
# each row it appends. Each statement on the SQL thread lets go of the GIL and takes it
# back; three fewer per publish halved the GIL hand-overs (study 18). The guard keeps
# a writer that moved the seq itself first (a version before this one) correct.
_V5 = """
CREATE TRIGGER change_log_takes_seq AFTER INSERT ON change_log
BEGIN
    UPDATE store_info SET seq = NEW.seq WHERE id = 1 AND seq < NEW.seq;
END;
"""

# Migration i brings the schema to version i + 1.
MIGRATIONS: Sequence[str] = (_V1, _V2, _V3, _V4, _V5)


def split_statements(script: str) -> list[str]:
    """Split a migration script into statements.

    ``executescript`` would commit the surrounding transaction first, so the
    statements are run one by one inside it instead.
    """
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()!r}")
    return statements


def migrate(cursor: Cursor, migrations: Sequence[str] = MIGRATIONS) -> tuple[int, int]:
    """Apply missing migrations; returns ``(version found, version now)``.

    Must run inside a write transaction (BEGIN IMMEDIATE) so two processes
    opening a fresh file do not both create the schema.
    """
    cursor.execute("PRAGMA user_version")
    found = int(cursor.fetchone()[0])
    known = len(migrations)
    if found > known:
        raise SchemaTooNew(found, known)
    for version in range(found, known):
        for statement in split_statements(migrations[version]):
            cursor.execute(statement)
        # PRAGMA takes no bound parameters; the value is our own int.
        cursor.execute(f"PRAGMA user_version = {version + 1:d}")
    return found, known


SYNCHRONOUS_MODES = frozenset({"NORMAL", "FULL", "EXTRA"})

MIN_SQLITE = (3, 38)
"""RETURNING (3.35) and the JSON functions built in (3.38): see :func:`configure_connection`."""

PAGE_SIZE = 1024
"""The page size of a new file. A publish updates one ``states`` row per account, and
every page it touches is written to the WAL whole at commit: with rows of about 60
octets spread over the table, 1 KiB pages write a quarter of what the default 4 KiB
pages do for the same rows. A file created with another size keeps it (WAL mode
cannot change it; ``VACUUM`` outside WAL mode could)."""

WAL_CHECKPOINT_BYTES = 8 << 20
"""How much WAL may pile up before a commit copies it back into the database (SQLite's
default is 1,000 pages). A checkpoint writes each changed page once however often it
changed, so fewer, larger checkpoints write fewer pages per publish; the WAL file
stays about this big between them."""


def configure_connection(
    connection: sqlite3.Connection, synchronous: str, busy_timeout_ms: int
) -> str:
    """Per-connection settings, run before any transaction; returns the journal mode.

    * ``busy_timeout`` first: switching to WAL and every later write may have to
      wait for the other process (daemon or ``jmappushctl``) to finish its write.
    * ``page_size`` before WAL: only a file that has no page yet takes it
      (:data:`PAGE_SIZE`).
    * WAL lets readers proceed while one writer commits; it is checkpointed every
      :data:`WAL_CHECKPOINT_BYTES`. A checkpoint changes when committed pages reach
      the database file, never whether a commit is durable.
    * ``synchronous=NORMAL`` in WAL mode: a commit reaches the operating system
      before it returns, so a committed change survives a crash or kill of the
      process; only a power loss or kernel crash can roll back the newest
      commits (never corrupt the file). ``FULL`` adds one fsync per commit for
      power-loss durability, at a throughput cost.
    * ``foreign_keys`` makes deletes cascade; SQLite leaves it off by default.
    * ``secure_delete`` overwrites deleted rows, so a destroyed push
      subscription's URL and keys do not linger in the file (PS-8).
    * SQLite :data:`MIN_SQLITE` or newer, with its JSON functions (built in since
      3.38): a publish takes its seqs with ``RETURNING`` and hands its rows over as one
      JSON array. An older library, or one built without them, is refused here by name.
    """
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old for the store; "
                           f"it needs {'.'.join(map(str, MIN_SQLITE))} or newer")
    try:
        connection.execute("SELECT json_extract('[1]', '$[0]') FROM json_each('[]')")
    except sqlite3.OperationalError as error:
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} lacks the JSON functions the "
                           f"store needs ({error}); it was built without them") from error
    connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms):d}")
    connection.execute(f"PRAGMA page_size = {PAGE_SIZE:d}")
    mode = str(connection.execute("PRAGMA journal_mode = WAL").fetchone()[0])
    page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
    connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_BYTES // page_size:d}")
    connection.execute(f"PRAGMA synchronous = {synchronous}")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA secure_delete = ON")
    return mode
