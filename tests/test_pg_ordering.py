"""The ordering fact of the PostgreSQL change log (issue 13), against a real server.

Two publishers on two connections race; a reader notes the highest seq it can see
(what a resumption token would stand for) while the first publisher is still open,
and later reads what came after it. With the one counter row the store uses, the
second publisher waits for the first to commit, so the reader never sees a seq
above an uncommitted one and misses nothing. The same race with a plain sequence
(what ``bigserial`` is) hands out 1 and 2 at once; the reader sees 2, resumes past 1
and loses it: the check below catches that, so it would fail a store built that way.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from jmappushd.store import pgops
from jmappushd.store.pgschema import migrate
from tests.pg_server import PgServer

Connection = psycopg.Connection[tuple[Any, ...]]
Publish = Callable[[pgops.Cursor, str], int]


def counter_row(cursor: pgops.Cursor, state: str) -> int:
    """How the store publishes: ``UPDATE change_seq SET seq = seq + n RETURNING seq``."""
    [seq] = pgops.record_batch(cursor, [json.dumps({"A": {"Email": state}})])
    return seq


def plain_sequence(cursor: pgops.Cursor, state: str) -> int:
    """The tempting alternative: a sequence (bigserial), numbered at call time."""
    cursor.execute("SELECT nextval('bigserial_seq')")
    row = cursor.fetchone()
    assert row is not None
    seq = int(row[0])
    cursor.execute("INSERT INTO changes (seq, changed) VALUES (%s, %s)", (seq, state))
    return seq


@pytest.fixture
def schema_dsn(pg_server: PgServer) -> Iterator[str]:
    dsn = pg_server.dsn(schema=pg_server.new_schema())
    with psycopg.connect(dsn, autocommit=True) as connection:
        migrate(connection)
        connection.execute("CREATE SEQUENCE bigserial_seq")
    yield dsn


def _visible(reader: Connection) -> set[int]:
    return {int(row[0]) for row in reader.execute("SELECT seq FROM changes").fetchall()}


def _blocked_or_done(admin: Connection, pid: int, done: threading.Event) -> bool:
    row = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()
    return done.is_set() or (row is not None and row[0] == "Lock")


def race(dsn: str, publish: Publish) -> tuple[int, set[int]]:
    """Run the race; returns the reader's resume point and the seqs it never got."""
    first = psycopg.connect(dsn, autocommit=True)
    second = psycopg.connect(dsn, autocommit=True)
    reader = psycopg.connect(dsn, autocommit=True)
    admin = psycopg.connect(dsn, autocommit=True)
    try:
        first.execute("BEGIN")
        publish(first.cursor(), "first")  # seq taken, not committed yet
        done = threading.Event()

        def second_publisher() -> None:
            with second.transaction():
                publish(second.cursor(), "second")
            done.set()

        thread = threading.Thread(target=second_publisher)
        thread.start()
        deadline = time.monotonic() + 10
        while not _blocked_or_done(admin, second.info.backend_pid, done):
            assert time.monotonic() < deadline, "the second publisher neither waited nor ran"
            time.sleep(0.01)
        seen = _visible(reader)
        resume_at = max(seen, default=0)  # the position a token would stand for
        first.execute("COMMIT")
        thread.join(10)
        assert done.is_set()
        later = {int(r[0]) for r in reader.execute(
            "SELECT seq FROM changes WHERE seq > %s", (resume_at,)).fetchall()}
        return resume_at, _visible(reader) - seen - later
    finally:
        for connection in (first, second, reader, admin):
            connection.close()


def test_counter_row_never_lets_a_reader_skip_a_lower_seq(schema_dsn: str) -> None:
    """The store's counter row: while the first publisher is open the second waits, the
    reader sees nothing above the open seq, and resuming loses nothing."""
    resume_at, missed = race(schema_dsn, counter_row)
    assert resume_at == 0
    assert missed == set()
    with psycopg.connect(schema_dsn, autocommit=True) as connection:
        assert _visible(connection) == {1, 2}


def test_the_check_catches_a_plain_sequence(schema_dsn: str) -> None:
    """The same race with a sequence: the reader sees 2 while 1 is open and, resuming
    after 2, never gets 1. This is the gap the test above would report for such a store."""
    resume_at, missed = race(schema_dsn, plain_sequence)
    assert resume_at == 2
    assert missed == {1}
