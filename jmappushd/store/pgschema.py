"""PostgreSQL schema: ordered migrations, applied under one advisory lock.

The version lives in ``jmappushd_schema``: migration ``i`` (0-based) brings the
database to version ``i + 1``. Each migration runs in the same transaction as its
version bump (PostgreSQL's DDL is transactional), so a crash leaves a whole
version. Several daemons starting on a new database at once take the same
transaction-level advisory lock first, so exactly one creates the schema (and the
epoch) and the others then find it. Never edit a released migration; append one.

Tables are created unqualified, in the first schema of the connection's
``search_path`` (set ``options=-csearch_path=...`` in the DSN to use another one).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from jmappushd.store.records import SchemaTooNew

# pg_advisory_xact_lock key of the migrations: "jmappush" in ASCII, as a bigint.
MIGRATION_LOCK = 0x6A6D617070757368

# The epoch is random, so a new database never accepts another's resumption tokens.
# ``change_seq`` is the one counter row every publishing transaction updates: its row
# lock, held to the commit, makes the sequence follow commit order (a sequence or
# bigserial hands numbers out at call time, so a reader could see 2 while 1 is still
# open and resume past 1 for good). ``changes`` is the ordered log a cluster node
# reads back after its watermark; ``states`` the newest state per account and type
# (since v5 folded from the log after the commit, see _V5_FOLD).
_V1 = """
CREATE TABLE store_info (
    id integer PRIMARY KEY CHECK (id = 1),
    epoch text NOT NULL,
    auth_generation bigint NOT NULL
);
INSERT INTO store_info (id, epoch, auth_generation)
    VALUES (1, 'e' || substr(md5(gen_random_uuid()::text), 1, 16), 0);
CREATE TABLE change_seq (
    id integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL
);
INSERT INTO change_seq (id, seq) VALUES (1, 0);
CREATE TABLE changes (
    seq bigint PRIMARY KEY,
    changed text NOT NULL,
    recorded timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE states (
    account_id text NOT NULL,
    type text NOT NULL,
    state text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (account_id, type)
);
CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE users (
    id text PRIMARY KEY,
    name text NOT NULL CONSTRAINT users_name_key UNIQUE,
    password_hash text NOT NULL,
    primary_account_id text NOT NULL CONSTRAINT users_primary_account_id_key UNIQUE,
    created double precision NOT NULL
);
CREATE TABLE grants (
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    account_id text NOT NULL,
    PRIMARY KEY (user_id, account_id)
);
CREATE TABLE tokens (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    digest bytea NOT NULL UNIQUE,
    label text NOT NULL DEFAULT '',
    created double precision NOT NULL
);
CREATE INDEX tokens_by_user ON tokens (user_id);
CREATE TABLE push_subscriptions (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id text NOT NULL,
    device_client_id text,
    url text NOT NULL,
    keys_p256dh text,
    keys_auth text,
    verification_code text,
    verified boolean NOT NULL DEFAULT false,
    client_verification_code text,
    expires double precision,
    types text,
    vapid_key_id text,
    created double precision NOT NULL,
    pending text,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt double precision,
    failing_since double precision,
    last_sent_seq bigint NOT NULL DEFAULT 0,
    dropped integer NOT NULL DEFAULT 0,
    backoff_until double precision
);
CREATE INDEX push_subscriptions_by_user ON push_subscriptions (user_id);
CREATE INDEX push_subscriptions_by_credential ON push_subscriptions (credential_id);
"""

# Push delivery leases (cluster mode, see pgleases): one row per bucket, free at first
# ('-infinity' has expired for everyone), and one heartbeat row per live node.
_V2_LEASES = """
CREATE TABLE push_leases (
    bucket smallint PRIMARY KEY CHECK (bucket BETWEEN 0 AND 255),
    owner text,
    expires timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO push_leases (bucket) SELECT generate_series(0, 255);
CREATE TABLE cluster_nodes (
    name text PRIMARY KEY,
    expires timestamptz NOT NULL
)
"""

# The push subscription creation rate shared by every node (issue 13): one row per
# creation in the last window (``[push] create-rate`` per minute), read and pruned by
# user under the user's row lock, swept by time.
_V3 = """
CREATE TABLE push_creations (
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    at double precision NOT NULL
);
CREATE INDEX push_creations_by_user ON push_creations (user_id, at);
CREATE INDEX push_creations_by_time ON push_creations (at)
"""

# Room on every ``states`` page for the next version of its rows (issue 13): a publish
# rewrites one row per (account, type), and an update that finds no room on its page
# writes the new version elsewhere plus a new primary-key entry; with half of each page
# free it stays on the page (HOT), touching no index. Measured with EXPLAIN (ANALYZE,
# BUFFERS, WAL) on a 1,000-row upsert: 2 WAL records a row instead of 4, 5 buffers instead
# of 11. It applies to pages written from now on; ``VACUUM FULL states`` rewrites the old.
_V4_HOT_STATES = """
ALTER TABLE states SET (fillfactor = 50)
"""

# The fold mark (issue 13): a publish only appends to ``changes``; the newest state per
# (account, type) is folded into ``states`` afterwards, and ``folded`` says up to which
# seq ``states`` holds every change (so pruning never deletes above it, and a catch-up
# lays the log above it over ``states``). A database written by an older version had
# ``states`` current at every commit: its mark starts at the log's top.
_V5_FOLD = """
CREATE TABLE change_fold (
    id integer PRIMARY KEY CHECK (id = 1),
    folded bigint NOT NULL
);
INSERT INTO change_fold (id, folded) SELECT 1, seq FROM change_seq WHERE id = 1
"""

# A log row of up to about 8 KB (a publish of up to about 250 accounts) stays on its page
# as written (issue 13): below the default 2 KB target every publish of more than some 60
# accounts was compressed with pglz when written and decompressed by every node's read.
_V6_LOG_INLINE = """
ALTER TABLE changes SET (toast_tuple_target = 8160)
"""

# Migration i brings the schema to version i + 1.
MIGRATIONS: Sequence[str] = (_V1, _V2_LEASES, _V3, _V4_HOT_STATES, _V5_FOLD, _V6_LOG_INLINE)

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS jmappushd_schema (
    id integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
)
"""


def _statements(script: str) -> list[str]:
    # Our migrations hold no ";" inside literals or bodies, so a plain split is exact.
    return [part.strip() for part in script.split(";") if part.strip()]


def read_version(connection: psycopg.Connection[tuple[object, ...]]) -> int:
    """The database's schema version, 0 for one jmappushd never touched (read only)."""
    row = connection.execute(
        "SELECT to_regclass('jmappushd_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = connection.execute("SELECT version FROM jmappushd_schema WHERE id = 1").fetchone()
    return 0 if found is None else int(str(found[0]))


def migrate(connection: psycopg.Connection[tuple[object, ...]],
            migrations: Sequence[str] = MIGRATIONS) -> tuple[int, int]:
    """Apply missing migrations in one transaction; returns ``(version found, now)``.

    Raises SchemaTooNew (and changes nothing) for a database a newer jmappushd wrote.
    The connection must be in autocommit mode (no transaction open).
    """
    known = len(migrations)
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute(_VERSION_TABLE)
        row = connection.execute(
            "SELECT version FROM jmappushd_schema WHERE id = 1 FOR UPDATE").fetchone()
        found = 0 if row is None else int(str(row[0]))
        if found > known:
            raise SchemaTooNew(found, known)
        for version in range(found, known):
            for statement in _statements(migrations[version]):
                connection.execute(statement.encode())
        if found != known:
            connection.execute(
                "INSERT INTO jmappushd_schema (id, version) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version", (known,))
    return found, known
