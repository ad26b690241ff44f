"""What only the SQLite store does, against a real reactor and real files (files, WAL,
migrations, two processes); the shared behaviour is in tests/test_store_conformance*.py."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from jmappushd.store import (
    SchemaTooNew,
    SQLiteStore,
    StoreClosed,
    sqlops,
)
from jmappushd.store.schema import (
    MIGRATIONS,
    PAGE_SIZE,
    WAL_CHECKPOINT_BYTES,
    Cursor,
    configure_connection,
    migrate,
    split_statements,
)

DIGEST_1 = bytes(range(32))


def raw(path: Path) -> sqlite3.Connection:
    """A second, independent connection, as jmappushctl or an operator would have."""
    return sqlite3.connect(str(path), isolation_level=None, timeout=5)


def add_subscription(path: Path, sub_id: str, user_id: str, credential_id: str, url: str) -> None:
    with raw(path) as connection:
        connection.execute(
            "INSERT INTO push_subscriptions (id, user_id, credential_id, url, created) "
            "VALUES (?, ?, ?, ?, 0)",
            (sub_id, user_id, credential_id, url),
        )


def subscription_ids(path: Path) -> set[str]:
    with raw(path) as connection:
        return {row[0] for row in connection.execute("SELECT id FROM push_subscriptions")}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jmappushd.sqlite"


@pytest_twisted.async_yield_fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(db_path), reactor)
    await opened.open()
    yield opened
    await opened.close()


# -- lifecycle, files and schema --


@pytest_twisted.ensureDeferred
async def test_files_are_private(store: SQLiteStore, db_path: Path) -> None:
    """The database, -wal and -shm files are created 0600 in a newly made directory."""
    await store.add_user("alice", "hash")
    names = {p.name for p in db_path.parent.iterdir()}
    assert {"jmappushd.sqlite", "jmappushd.sqlite-wal", "jmappushd.sqlite-shm"} <= names
    for name in names:
        assert stat.S_IMODE(os.stat(db_path.parent / name).st_mode) == 0o600, name


@pytest_twisted.ensureDeferred
async def test_wal_mode_is_persistent(store: SQLiteStore, db_path: Path) -> None:
    """The file is in WAL mode, so another process's readers never wait for a writer."""
    with raw(db_path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_configure_connection_pragmas(tmp_path: Path) -> None:
    """Each connection gets busy_timeout, WAL, synchronous, foreign_keys and secure_delete."""
    connection = sqlite3.connect(str(tmp_path / "x.sqlite"), isolation_level=None)
    assert configure_connection(connection, "NORMAL", 1234) == "wal"
    pragma = {
        name: connection.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("busy_timeout", "synchronous", "foreign_keys", "secure_delete")
    }
    assert pragma == {"busy_timeout": 1234, "synchronous": 1, "foreign_keys": 1, "secure_delete": 1}
    with pytest.raises(ValueError):
        configure_connection(connection, "OFF", 1)


def test_a_library_without_json_functions_is_refused_by_name(tmp_path: Path) -> None:
    """The upsert of a publish's rows needs json_each/json_extract; a build without them
    (simulated with an authorizer that denies those functions) fails at connect with a
    message naming what is missing, not at the first publish."""
    connection = sqlite3.connect(str(tmp_path / "x.sqlite"), isolation_level=None)

    def deny_json(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").startswith("json"):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    connection.set_authorizer(deny_json)
    with pytest.raises(RuntimeError, match="lacks the JSON functions"):
        configure_connection(connection, "NORMAL", 1000)


def test_an_old_library_is_refused_by_name(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A library older than MIN_SQLITE (no RETURNING, JSON optional) fails at connect."""
    connection = sqlite3.connect(str(tmp_path / "x.sqlite"), isolation_level=None)
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    with pytest.raises(RuntimeError, match=r"SQLite 3\.34\.1 is too old .* 3\.38 or newer"):
        configure_connection(connection, "NORMAL", 1000)


def test_new_file_gets_small_pages_and_a_larger_wal(tmp_path: Path) -> None:
    """A new file takes PAGE_SIZE (a publish writes a quarter of 4 KiB pages' WAL), and
    the WAL is checkpointed every WAL_CHECKPOINT_BYTES, not SQLite's 1,000 pages."""
    connection = sqlite3.connect(str(tmp_path / "new.sqlite"), isolation_level=None)
    configure_connection(connection, "NORMAL", 1000)
    connection.execute("CREATE TABLE t (x)")
    assert connection.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 1024
    assert (connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            == WAL_CHECKPOINT_BYTES // PAGE_SIZE)


def test_existing_file_keeps_its_page_size(tmp_path: Path) -> None:
    """A file made with 4 KiB pages keeps them and its rows; its checkpoint interval is
    the same number of bytes."""
    path = str(tmp_path / "old.sqlite")
    with sqlite3.connect(path, isolation_level=None) as old:
        old.execute("PRAGMA page_size = 4096")
        old.execute("PRAGMA journal_mode = WAL")
        old.execute("CREATE TABLE t (x)")
        old.execute("INSERT INTO t VALUES (1)")
    connection = sqlite3.connect(path, isolation_level=None)
    assert configure_connection(connection, "NORMAL", 1000) == "wal"
    assert connection.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == (
        WAL_CHECKPOINT_BYTES // 4096)
    assert connection.execute("SELECT x FROM t").fetchall() == [(1,)]


_KILLED_WRITER = """
import os, signal, sqlite3, sys
from jmappushd.store import sqlops
from jmappushd.store.schema import configure_connection, migrate
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
configure_connection(connection, "NORMAL", 5000)
cursor = connection.cursor()
cursor.execute("BEGIN IMMEDIATE")
migrate(cursor)
sqlops.record_batch(cursor, ['{"A":{"Email":"s1"}}', '{"A":{"Email":"s2"}}'])
cursor.execute("COMMIT")
os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint: the commit is in the WAL only
"""


def test_commit_survives_a_killed_process_before_any_checkpoint(tmp_path: Path) -> None:
    """What the daemon promises before a 202 (synchronous=NORMAL in WAL mode): a commit
    outlives the process that made it, although the WAL was never checkpointed."""
    import subprocess
    import sys

    path = tmp_path / "killed.sqlite"
    result = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)],
                            cwd=Path(__file__).resolve().parent.parent, check=False)
    assert result.returncode == -9
    assert (tmp_path / "killed.sqlite-wal").stat().st_size > 0
    with raw(path) as connection:
        # Both publishes are in the log, unfolded; a reader overlays it.
        assert connection.execute("SELECT seq FROM change_log").fetchall() == [(1,), (2,)]
        assert sqlops.states(connection.cursor(), ["A"], None) == {"A": {"Email": "s2"}}
        assert connection.execute("SELECT seq FROM store_info").fetchone()[0] == 2


@pytest_twisted.ensureDeferred
async def test_open_folds_what_a_killed_process_left_in_the_log(tmp_path: Path) -> None:
    """A writer that dies between folds leaves its publishes in the log; the next store
    to open the file folds them into states, newest per pair, and empties the log."""
    path = tmp_path / "left.sqlite"
    with raw(path) as connection:
        configure_connection(connection, "NORMAL", 5000)
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        migrate(cursor)
        sqlops.record_batch(cursor, ['{"A":{"Email":"s1","Mailbox":"m1"}}',
                                     '{"A":{"Email":"s2"},"B":{"Email":"b1"}}'])
        cursor.execute("COMMIT")
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        with raw(path) as connection:
            assert connection.execute("SELECT count(*) FROM change_log").fetchone()[0] == 0
            assert sorted(connection.execute("SELECT * FROM states")) == [
                ("A", "Email", "s2", 2), ("A", "Mailbox", "m1", 1), ("B", "Email", "b1", 2)]
        assert await store.changes_since(1, ["A", "B"]) == {"A": {"Email": "s2"},
                                                           "B": {"Email": "b1"}}
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_the_log_is_folded_on_a_count_and_at_close(db_path: Path) -> None:
    """A fold is queued behind the publish that reaches either bound, and close folds
    what is left: between folds the log holds the publishes, after them states do."""
    store = SQLiteStore(str(db_path), reactor, fold_states=5, fold_publishes=3)
    await store.open()

    def logged() -> int:
        with raw(db_path) as connection:
            return int(connection.execute("SELECT count(*) FROM change_log").fetchone()[0])

    try:
        await store.record_changes({"A": {"Email": "s1"}})
        await store.record_changes({"A": {"Email": "s2"}})
        assert logged() == 2
        await store.record_changes({"B": {"Email": "b1"}})  # third publish: a fold
        await store.position()  # queued after the fold, so it has run
        assert logged() == 0
        await store.record_changes({"C": {"A": "1", "B": "2", "C": "3", "D": "4"}})
        assert logged() == 1
        await store.record_changes({"C": {"E": "5"}})  # the fifth state since: a fold
        await store.position()
        assert logged() == 0
        await store.record_changes({"A": {"Email": "s3"}})
        assert logged() == 1
    finally:
        await store.close()
    assert logged() == 0
    with raw(db_path) as connection:
        rows = {(a, t): (s, q) for a, t, s, q in connection.execute("SELECT * FROM states")}
    assert rows[("A", "Email")] == ("s3", 6)
    assert rows[("B", "Email")] == ("b1", 3)
    assert rows[("C", "E")] == ("5", 5)


def test_reads_overlay_the_log_on_the_folded_states() -> None:
    """sqlops.states answers the same whatever part of the history is folded: the newest
    state per pair, and with ``after`` only the pairs changed above it (ES-9, WS-19)."""
    history = ['{"A":{"Email":"a1","Mailbox":"m1"},"B":{"Email":"b1"}}',
               '{"A":{"Email":"a2"}}', '{"B":{"Email":"b2"},"C":{"Email":"c1"}}',
               '{"A":{"Mailbox":"m2"}}', '{"C":{"Email":"c2"}}']
    expected = {None: {"A": {"Email": "a2", "Mailbox": "m2"}, "B": {"Email": "b2"},
                       "C": {"Email": "c2"}},
                2: {"A": {"Mailbox": "m2"}, "B": {"Email": "b2"}, "C": {"Email": "c2"}},
                4: {"C": {"Email": "c2"}}, 5: {}}
    for folded in range(len(history) + 1):
        connection = sqlite3.connect(":memory:", isolation_level=None)
        cursor = connection.cursor()
        migrate(cursor)
        sqlops.record_batch(cursor, history[:folded])
        sqlops.fold(cursor)
        sqlops.record_batch(cursor, history[folded:])
        assert connection.execute("SELECT count(*) FROM change_log").fetchone()[0] == (
            len(history) - folded)
        for after, states in expected.items():
            assert sqlops.states(cursor, ["A", "B", "C", "D"], after) == states, (folded, after)
        assert sqlops.states(cursor, ["B"], None) == {"B": {"Email": "b2"}}


def test_reads_of_many_accounts_are_chunked_with_the_log() -> None:
    """Each chunk binds its ids twice (states and log); more ids than one chunk holds
    still answer from both."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    cursor = connection.cursor()
    migrate(cursor)
    ids = [f"a{i:04d}" for i in range(1200)]
    sqlops.record_batch(cursor, ['{' + ",".join(f'"{i}":{{"Email":"f"}}' for i in ids) + '}'])
    sqlops.fold(cursor)
    sqlops.record_batch(cursor, ['{' + ",".join(f'"{i}":{{"Email":"l"}}' for i in ids[::2])
                                 + '}'])
    read = sqlops.states(cursor, ids, None)
    assert len(read) == 1200
    assert {i for i, s in read.items() if s == {"Email": "l"}} == set(ids[::2])
    assert set(sqlops.states(cursor, ids, 1)) == set(ids[::2])


@pytest_twisted.ensureDeferred
async def test_refuses_newer_schema(db_path: Path) -> None:
    """A file with a user_version newer than the known migrations is refused, untouched."""
    db_path.parent.mkdir()
    with raw(db_path) as connection:
        connection.execute("PRAGMA user_version = 99")
    store = SQLiteStore(str(db_path), reactor)
    with pytest.raises(SchemaTooNew, match="99 is newer"):
        await store.open()
    with raw(db_path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 99
        assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    with pytest.raises(StoreClosed):
        await store.get_user("alice")


def test_v2_drops_the_seq_index_and_keeps_the_states() -> None:
    """A version-1 file upgrades in place: its states survive, the index nothing reads is
    gone, and the catch-up query (accounts, then seq) still walks the primary key."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(connection.cursor(), MIGRATIONS[:1]) == (0, 1)
    connection.execute("INSERT INTO states VALUES ('A', 'Email', 's1', 7)")
    assert migrate(connection.cursor(), MIGRATIONS[:2]) == (1, 2)
    assert connection.execute("SELECT * FROM states").fetchall() == [("A", "Email", "s1", 7)]
    indexes = connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    names = [r[0] for r in indexes]
    assert "states_by_seq" not in names
    plan = " ".join(str(r) for r in connection.execute(
        "EXPLAIN QUERY PLAN SELECT account_id, type, state FROM states "
        "WHERE account_id IN (?, ?) AND seq > ?", ("A", "B", 3)))
    assert "PRIMARY KEY" in plan and "SCAN" not in plan


def test_migrate_applies_only_missing_steps() -> None:
    """migrate() runs only migrations above user_version and records the new version."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    step = "CREATE TABLE extra (x TEXT DEFAULT 'a;b'); INSERT INTO extra DEFAULT VALUES;"
    known = len(MIGRATIONS)
    assert migrate(connection.cursor(), MIGRATIONS) == (0, known)
    epoch = connection.execute("SELECT epoch FROM store_info").fetchone()[0]
    assert migrate(connection.cursor(), [*MIGRATIONS, step]) == (known, known + 1)
    assert migrate(connection.cursor(), [*MIGRATIONS, step]) == (known + 1, known + 1)
    assert connection.execute("SELECT x FROM extra").fetchall() == [("a;b",)]
    assert connection.execute("SELECT epoch FROM store_info").fetchone()[0] == epoch
    with pytest.raises(SchemaTooNew):
        migrate(connection.cursor(), MIGRATIONS)


def test_split_statements_keeps_triggers_and_strings_whole() -> None:
    """Semicolons inside strings and trigger bodies do not split a statement."""
    script = """
        CREATE TABLE t (x TEXT);
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 'p;q'; END;
        INSERT INTO t VALUES ('1;2')
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[1].endswith("END;")
    with pytest.raises(ValueError):
        split_statements("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1;")


@pytest_twisted.ensureDeferred
async def test_memory_database(tmp_path: Path) -> None:
    """":memory:" gives a working throwaway store and creates no file."""
    store = SQLiteStore(":memory:", reactor)
    await store.open()
    try:
        assert await store.record_changes({"A": {"Email": "s1"}}) == 1
        assert await store.current_states(["A"]) == {"A": {"Email": "s1"}}
    finally:
        await store.close()
    assert not os.path.exists(":memory:")


# -- SQLite specifics behind the conformance suite (tests/test_store_conformance*.py) --


@pytest_twisted.ensureDeferred
async def test_remove_user_deletes_rows_without_foreign_keys(store: SQLiteStore,
                                                             db_path: Path) -> None:
    """Removing a user deletes its rows explicitly, so rows written by a connection without
    foreign_keys (an operator's sqlite3 shell) go too."""
    alice = await store.add_user("alice", "h")
    bob = await store.add_user("bob", "h")
    await store.grant("alice", "Bshared")
    with raw(db_path) as connection:  # foreign_keys is off on this connection
        connection.execute("INSERT INTO grants (user_id, account_id) VALUES (?, 'Bx')",
                           (alice.id,))
    add_subscription(db_path, "S1", alice.id, "basic:" + alice.id, "https://push.example/a")
    add_subscription(db_path, "S2", bob.id, "basic:" + bob.id, "https://push.example/b")
    assert await store.remove_user("alice") is True
    assert subscription_ids(db_path) == {"S2"}
    with raw(db_path) as connection:
        assert connection.execute("SELECT count(*) FROM grants").fetchone()[0] == 0


@pytest_twisted.ensureDeferred
async def test_all_sql_runs_on_one_thread_in_call_order(store: SQLiteStore) -> None:
    """The call-order guarantees rest on one SQL thread: every transaction and every
    answer without SQL runs on the same thread, not the reactor's, in call order."""
    import threading

    seen: list[tuple[str, int]] = []

    def body(cursor: object, name: str) -> str:
        seen.append((name, threading.get_ident()))
        return name

    calls = [store._in_turn(lambda: body(None, "answer")) if i == 10
             else store._run("BEGIN", body, f"t{i}") for i in range(20)]
    results = await DeferredList(calls, fireOnOneErrback=True)
    assert [r for _, r in results] == [name for name, _ in seen]
    assert [name for name, _ in seen][10] == "answer"
    assert len({ident for _, ident in seen}) == 1
    assert seen[0][1] != threading.get_ident()


@pytest_twisted.ensureDeferred
async def test_a_failed_body_rolls_back_and_the_thread_goes_on(store: SQLiteStore,
                                                               db_path: Path) -> None:
    """A transaction body that raises is rolled back (nothing it wrote stays) and its
    error reaches the caller; the next call runs normally."""

    def half_then_fail(cursor: Cursor) -> None:
        cursor.execute("INSERT INTO meta (key, value) VALUES ('half', 'x')")
        raise ValueError("body failed")

    with pytest.raises(ValueError, match="body failed"):
        await store._run(sqlops.BEGIN_WRITE, half_then_fail)
    assert await store.get_meta("half") is None
    await store.set_meta("after", "y")
    assert await store.get_meta("after") == "y"


@pytest_twisted.ensureDeferred
async def test_a_connection_that_cannot_open_fails_each_call_cleanly(tmp_path: Path) -> None:
    """A file SQLite cannot open fails open() with SQLite's error, and the store is
    closed afterwards (no thread left waiting)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    store = SQLiteStore(str(blocker / "db.sqlite"), reactor)
    with pytest.raises(OSError):
        await store.open()
    with pytest.raises(StoreClosed):
        await store.position()


@pytest_twisted.ensureDeferred
async def test_destroyed_subscription_url_is_erased(store: SQLiteStore, db_path: Path) -> None:
    """PS-8: after revoke and a checkpoint, the subscription URL is not in the file."""
    alice = await store.add_user("alice", "h")
    token = await store.create_token("alice", DIGEST_1)
    url = "https://push.example/secret-endpoint-7f3a9c"
    add_subscription(db_path, "S1", alice.id, "token:" + token.id, url)
    await store.revoke_token(token.id)
    with raw(db_path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for name in os.listdir(db_path.parent):
        assert url.encode() not in (db_path.parent / name).read_bytes(), name


@pytest_twisted.ensureDeferred
async def test_record_changes_committed_when_fired(store: SQLiteStore, db_path: Path) -> None:
    """When record_changes fires, another connection already sees the change (committed)."""
    seq = await store.record_changes({"A": {"Email": "s1"}})
    with raw(db_path) as connection:
        row = connection.execute("SELECT changed FROM change_log WHERE seq = ?", (seq,))
        assert row.fetchone() == ('{"A":{"Email":"s1"}}',)
        assert sqlops.states(connection.cursor(), ["A"], seq - 1) == {"A": {"Email": "s1"}}


# -- two processes on one file --


@pytest_twisted.ensureDeferred
async def test_two_stores_share_one_file(store: SQLiteStore, db_path: Path) -> None:
    """A second store (jmappushctl) sees the daemon's data, and vice versa, at once."""
    ctl = SQLiteStore(str(db_path), reactor)
    await ctl.open()
    try:
        assert await ctl.position() == await store.position()
        generation = await store.auth_generation()
        alice = await ctl.add_user("alice", "h")
        assert await store.get_user("alice") == alice
        assert await store.auth_generation() > generation
        await store.record_changes({"A": {"Email": "s1"}})
        assert await ctl.current_states(["A"]) == {"A": {"Email": "s1"}}
    finally:
        await ctl.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_writers_never_share_a_seq(store: SQLiteStore, db_path: Path) -> None:
    """Two stores publishing concurrently get distinct, gapless seqs (BEGIN IMMEDIATE)."""
    ctl = SQLiteStore(str(db_path), reactor)
    await ctl.open()
    try:
        mine = [store.record_changes({"A": {"Email": f"d{i}"}}) for i in range(150)]
        theirs = [ctl.record_changes({"B": {"Email": f"c{i}"}}) for i in range(150)]
        results = await DeferredList([*mine, *theirs], fireOnOneErrback=True)
        seqs = [seq for _, seq in results]
        assert sorted(seqs) == list(range(1, 301))
        assert seqs[:150] == sorted(seqs[:150]) and seqs[150:] == sorted(seqs[150:])
        assert (await store.position())[1] == 300
    finally:
        await ctl.close()


@pytest_twisted.ensureDeferred
async def test_writer_waits_for_other_process_lock(store: SQLiteStore, db_path: Path) -> None:
    """A write waits (busy timeout) while another process holds the write lock."""
    other = raw(db_path)
    other.execute("BEGIN IMMEDIATE")
    pending = store.record_changes({"A": {"Email": "s1"}})
    waited: list[bool] = []

    def release() -> None:
        waited.append(not pending.called)
        other.execute("COMMIT")

    reactor.callLater(0.2, release)
    assert await pending == 1
    assert waited == [True]
    other.close()


@pytest_twisted.ensureDeferred
async def test_lock_timeout_fails_cleanly(db_path: Path) -> None:
    """A write that outlasts the busy timeout fails; the next one succeeds."""
    store = SQLiteStore(str(db_path), reactor, busy_timeout_ms=50)
    await store.open()
    other = raw(db_path)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.record_changes({"A": {"Email": "s1"}})
        other.execute("ROLLBACK")
        assert await store.record_changes({"A": {"Email": "s2"}}) == 1
    finally:
        other.close()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_reader_not_blocked_by_writer(store: SQLiteStore, db_path: Path) -> None:
    """Reads proceed on the last committed snapshot while another process writes."""
    await store.record_changes({"A": {"Email": "s1"}})
    other = raw(db_path)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE states SET state = 'dirty'")
        result: Deferred[dict[str, dict[str, str]]] = store.current_states(["A"])
        assert await result == {"A": {"Email": "s1"}}
    finally:
        other.execute("ROLLBACK")
        other.close()



def test_v4_adds_the_change_log_and_keeps_the_states() -> None:
    """A version-3 file upgrades in place: its states stay and read as before, with an
    empty log beside them."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(connection.cursor(), MIGRATIONS[:3]) == (0, 3)
    connection.execute("INSERT INTO states VALUES ('A', 'Email', 's1', 7)")
    assert migrate(connection.cursor(), MIGRATIONS[:4]) == (3, 4)
    assert connection.execute("SELECT count(*) FROM change_log").fetchone()[0] == 0
    assert sqlops.states(connection.cursor(), ["A"], 6) == {"A": {"Email": "s1"}}
    assert sqlops.states(connection.cursor(), ["A"], 7) == {}


def test_v5_a_publish_is_one_statement_that_takes_the_next_seqs() -> None:
    """A version-4 file upgrades in place; a batch of publishes is then one statement
    (no BEGIN, UPDATE or COMMIT of its own: study 18) whose rows take the seqs after the
    store's, in order, and move the store's seq to the last; a writer of the previous
    version (seq moved first, then the rows) still gets its own seqs after it."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(connection.cursor(), MIGRATIONS[:4]) == (0, 4)
    connection.execute("UPDATE store_info SET seq = 41 WHERE id = 1")
    assert migrate(connection.cursor(), MIGRATIONS[:5]) == (4, 5)
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    texts = ['{"A":{"Email":"s1"}}', '{"B":{"Email":"s2"}}', '{"A":{"Email":"s3"}}']
    assert sqlops.record_batch(connection.cursor(), texts) == [42, 43, 44]
    connection.set_trace_callback(None)
    # The trace reports the statement again for each trigger program it runs: one text.
    assert len(set(statements)) == 1 and statements[0].startswith("INSERT INTO change_log")
    assert connection.execute("SELECT seq FROM store_info").fetchone()[0] == 44
    assert connection.execute("SELECT seq, changed FROM change_log").fetchall() == [
        (42, texts[0]), (43, texts[1]), (44, texts[2])]
    assert sqlops.states(connection.cursor(), ["A", "B"], 41) == {
        "A": {"Email": "s3"}, "B": {"Email": "s2"}}
    # The previous version's two statements, in their transaction.
    connection.execute("BEGIN IMMEDIATE")
    first = connection.execute(
        "UPDATE store_info SET seq = seq + 2 WHERE id = 1 RETURNING seq").fetchone()[0] - 1
    connection.execute("INSERT INTO change_log (seq, changed) SELECT ? + key, value "
                       "FROM json_each(?)", (first, '[{"C":{"Email":"x"}},{"C":{"Email":"y"}}]'))
    connection.execute("COMMIT")
    assert first == 45
    assert connection.execute("SELECT seq FROM store_info").fetchone()[0] == 46
    assert sqlops.record_batch(connection.cursor(), texts[:1]) == [47]
    assert sqlops.record_batch(connection.cursor(), []) == []
