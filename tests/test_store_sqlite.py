"""The SQLite store against a real reactor and real files (pytest-twisted)."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from jmappushd.store import (
    Account,
    AccountInUse,
    IStore,
    NoSuchUser,
    SchemaTooNew,
    SQLiteStore,
    StoreClosed,
    User,
    UserExists,
)
from jmappushd.store.schema import MIGRATIONS, configure_connection, migrate, split_statements

ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,254}$")
DIGEST_1 = bytes(range(32))
DIGEST_2 = bytes(range(1, 33))


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


async def reopen(old: SQLiteStore) -> SQLiteStore:
    await old.close()
    new = SQLiteStore(old.path, reactor)
    await new.open()
    return new


# -- lifecycle, files and schema --


@pytest_twisted.ensureDeferred
async def test_provides_istore(store: SQLiteStore) -> None:
    """SQLiteStore provides every IStore method with a matching signature."""
    assert verifyObject(IStore, store)


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
async def test_use_outside_open_fails(db_path: Path) -> None:
    """Calls before open() or after close() fail with StoreClosed; close() is idempotent."""
    store = SQLiteStore(str(db_path), reactor)
    with pytest.raises(StoreClosed):
        await store.position()
    await store.open()
    with pytest.raises(RuntimeError):
        await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreClosed):
        await store.record_changes({"A": {"Email": "s1"}})


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


# -- users, accounts, grants --


@pytest_twisted.ensureDeferred
async def test_add_user_makes_opaque_ids(store: SQLiteStore) -> None:
    """API-19: generated user and account ids start with a letter and use the Id alphabet."""
    alice = await store.add_user("alice", "hash")
    assert re.fullmatch(r"a[A-Za-z0-9_-]{23}", alice.primary_account_id)
    assert re.fullmatch(r"u[A-Za-z0-9_-]{23}", alice.id)
    bob = await store.add_user("bob", "hash")
    assert bob.primary_account_id != alice.primary_account_id
    assert await store.get_user("alice") == alice
    assert await store.get_user_by_id(alice.id) == alice
    assert await store.get_user("carol") is None
    assert await store.get_user_by_id("nope") is None


@pytest_twisted.ensureDeferred
async def test_add_user_conflicts(store: SQLiteStore) -> None:
    """A taken name raises UserExists; a taken primary account raises AccountInUse."""
    await store.add_user("alice", "hash", "Ashared")
    generation = await store.auth_generation()
    with pytest.raises(UserExists):
        await store.add_user("alice", "other")
    with pytest.raises(AccountInUse):
        await store.add_user("bob", "hash", "Ashared")
    assert await store.get_user("bob") is None
    assert await store.auth_generation() == generation


@pytest_twisted.ensureDeferred
async def test_created_uses_injected_clock(db_path: Path) -> None:
    """User and token creation times come from the injected clock."""
    clock = Clock()
    clock.advance(1234.5)
    store = SQLiteStore(str(db_path), reactor, clock=clock)
    await store.open()
    try:
        assert (await store.add_user("alice", "h")).created == 1234.5
        assert (await store.create_token("alice", DIGEST_1)).created == 1234.5
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_list_users_and_passwords(store: SQLiteStore) -> None:
    """Users list by name; set_password replaces the hash or raises NoSuchUser."""
    await store.add_user("bob", "b")
    await store.add_user("alice", "a")
    assert [u.name for u in await store.list_users()] == ["alice", "bob"]
    await store.set_password("alice", "new")
    alice = await store.get_user("alice")
    assert alice is not None and alice.password_hash == "new"
    assert "new" not in repr(alice)
    with pytest.raises(NoSuchUser):
        await store.set_password("carol", "x")


@pytest_twisted.ensureDeferred
async def test_grants_and_accounts(store: SQLiteStore) -> None:
    """Accounts list the primary (personal, user's name) first, then grants sorted by id."""
    alice = await store.add_user("alice", "h", "Aalice")
    await store.grant("alice", "Zteam")
    await store.grant("alice", "Bshared")
    await store.grant("alice", "Bshared")
    await store.grant("alice", "Aalice")
    assert await store.accounts_for_user(alice.id) == [
        Account("Aalice", "alice", True),
        Account("Bshared", "Bshared", False),
        Account("Zteam", "Zteam", False),
    ]
    assert await store.revoke_grant("alice", "Zteam") is True
    assert await store.revoke_grant("alice", "Zteam") is False
    assert await store.revoke_grant("nobody", "Bshared") is False
    assert [a.id for a in await store.accounts_for_user(alice.id)] == ["Aalice", "Bshared"]
    assert await store.accounts_for_user("unknown") == []
    with pytest.raises(NoSuchUser):
        await store.grant("nobody", "Bshared")


@pytest_twisted.ensureDeferred
async def test_remove_user_cascades(store: SQLiteStore, db_path: Path) -> None:
    """PS-7: removing a user deletes its tokens, grants and push subscriptions only."""
    alice = await store.add_user("alice", "h")
    bob = await store.add_user("bob", "h")
    await store.grant("alice", "Bshared")
    await store.create_token("alice", DIGEST_1)
    await store.create_token("bob", DIGEST_2)
    add_subscription(db_path, "S1", alice.id, "basic:" + alice.id, "https://push.example/a")
    add_subscription(db_path, "S2", bob.id, "basic:" + bob.id, "https://push.example/b")
    assert await store.remove_user("alice") is True
    assert await store.remove_user("alice") is False
    assert await store.get_user("alice") is None
    assert await store.find_token(DIGEST_1) is None
    assert await store.find_token(DIGEST_2) is not None
    assert subscription_ids(db_path) == {"S2"}
    with raw(db_path) as connection:
        assert connection.execute("SELECT count(*) FROM grants").fetchone()[0] == 0
    again = await store.add_user("alice", "h")
    assert await store.accounts_for_user(again.id) == [
        Account(again.primary_account_id, "alice", True)
    ]


# -- tokens --


@pytest_twisted.ensureDeferred
async def test_tokens(store: SQLiteStore) -> None:
    """Tokens are stored by digest, found with their owner, listed, and revoked."""
    alice = await store.add_user("alice", "h")
    first = await store.create_token("alice", DIGEST_1, "laptop")
    second = await store.create_token("alice", DIGEST_2)
    assert ID.match(first.id) and first.id != second.id
    assert (first.user_id, first.label, second.label) == (alice.id, "laptop", "")
    assert await store.find_token(DIGEST_1) == (first, alice)
    assert await store.find_token(bytes(32)) is None
    assert [t.id for t in await store.list_tokens("alice")] == [first.id, second.id]
    assert await store.list_tokens("nobody") == []
    assert await store.revoke_token(first.id) is True
    assert await store.revoke_token(first.id) is False
    assert await store.find_token(DIGEST_1) is None
    with pytest.raises(NoSuchUser):
        await store.create_token("nobody", bytes(32))
    with pytest.raises(ValueError):
        await store.create_token("alice", b"short")


@pytest_twisted.ensureDeferred
async def test_revoke_token_destroys_its_subscriptions(store: SQLiteStore, db_path: Path) -> None:
    """PS-7: revoking a token destroys the subscriptions created with that token only."""
    alice = await store.add_user("alice", "h")
    token = await store.create_token("alice", DIGEST_1)
    other = await store.create_token("alice", DIGEST_2)
    add_subscription(db_path, "S1", alice.id, "token:" + token.id, "https://p.example/1")
    add_subscription(db_path, "S2", alice.id, "token:" + other.id, "https://p.example/2")
    add_subscription(db_path, "S3", alice.id, "basic:" + alice.id, "https://p.example/3")
    await store.revoke_token(token.id)
    assert subscription_ids(db_path) == {"S2", "S3"}


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
async def test_auth_generation_bumps_on_credential_changes(store: SQLiteStore) -> None:
    """Every change to users, passwords, grants or tokens bumps the generation; reads do not."""
    seen = [await store.auth_generation()]

    async def bumped() -> bool:
        seen.append(await store.auth_generation())
        return seen[-1] > seen[-2]

    await store.add_user("alice", "h")
    assert await bumped()
    await store.set_password("alice", "h2")
    assert await bumped()
    await store.grant("alice", "Bshared")
    assert await bumped()
    await store.grant("alice", "Bshared")
    assert not await bumped()
    await store.revoke_grant("alice", "Bshared")
    assert await bumped()
    token = await store.create_token("alice", DIGEST_1)
    assert await bumped()
    await store.find_token(DIGEST_1)
    await store.record_changes({"A": {"Email": "s1"}})
    await store.set_meta("k", "v")
    assert not await bumped()
    await store.revoke_token(token.id)
    assert await bumped()
    await store.remove_user("alice")
    assert await bumped()


# -- states and the change sequence --


@pytest_twisted.ensureDeferred
async def test_record_changes(store: SQLiteStore) -> None:
    """Each publish gets the next seq and upserts the newest state per (account, type)."""
    epoch, seq = await store.position()
    assert ID.match(epoch) and seq == 0
    assert await store.record_changes({"A": {"Email": "s1", "Mailbox": "m1"}}) == 1
    assert await store.record_changes({"A": {"Email": "s2"}, "B": {"Email": "b1"}}) == 2
    assert await store.position() == (epoch, 2)
    assert await store.current_states(["A", "B", "C"]) == {
        "A": {"Email": "s2", "Mailbox": "m1"},
        "B": {"Email": "b1"},
    }
    assert await store.current_states([]) == {}


@pytest_twisted.ensureDeferred
async def test_record_changes_rejects_empty_and_non_strings(store: SQLiteStore) -> None:
    """A publish naming no state is a ValueError, a non-string a TypeError; seq stays put."""
    with pytest.raises(ValueError):
        await store.record_changes({})
    with pytest.raises(ValueError):
        await store.record_changes({"A": {}})
    with pytest.raises(TypeError):
        await store.record_changes({"A": {"Email": 5}})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        await store.record_changes_batch([{"A": {"Email": "s"}}, {}])
    assert (await store.position())[1] == 0


@pytest_twisted.ensureDeferred
async def test_record_changes_batch(store: SQLiteStore) -> None:
    """A batch gets consecutive seqs in one transaction; the later state wins."""
    await store.record_changes({"A": {"Email": "s0"}})
    seqs = await store.record_changes_batch(
        [{"A": {"Email": "s1"}}, {"B": {"Email": "b1"}}, {"A": {"Email": "s2"}}]
    )
    assert seqs == [2, 3, 4]
    assert await store.record_changes_batch([]) == []
    assert await store.changes_since(2, ["A", "B"]) == {"A": {"Email": "s2"}, "B": {"Email": "b1"}}
    assert await store.changes_since(3, ["A", "B"]) == {"A": {"Email": "s2"}}


@pytest_twisted.ensureDeferred
async def test_changes_since_filters_by_seq_and_account(store: SQLiteStore) -> None:
    """changes_since returns only the given accounts' states changed after the seq."""
    await store.record_changes({"A": {"Email": "a1", "Mailbox": "m1"}, "B": {"Email": "b1"}})
    await store.record_changes({"A": {"Email": "a2"}})
    await store.record_changes({"B": {"Mailbox": "bm"}, "C": {"Email": "c1"}})
    assert await store.changes_since(0, ["A"]) == {"A": {"Email": "a2", "Mailbox": "m1"}}
    assert await store.changes_since(1, ["A", "B"]) == {
        "A": {"Email": "a2"},
        "B": {"Mailbox": "bm"},
    }
    assert await store.changes_since(2, ["A"]) == {}
    assert await store.changes_since(3, ["A", "B", "C"]) == {}
    assert await store.changes_since(0, []) == {}


@pytest_twisted.ensureDeferred
async def test_many_accounts_are_queried_in_chunks(store: SQLiteStore) -> None:
    """Account lists longer than one IN-list chunk still return every match."""
    changed = {f"A{i}": {"Email": f"s{i}"} for i in range(1200)}
    await store.record_changes(changed)
    states = await store.changes_since(0, [*changed, "Aother"])
    assert states == {account: dict(types) for account, types in changed.items()}


@pytest_twisted.ensureDeferred
async def test_sequence_and_epoch_survive_restart(store: SQLiteStore) -> None:
    """After reopening, the epoch is the same, seq continues, and states are kept."""
    epoch, _ = await store.position()
    await store.record_changes({"A": {"Email": "s1"}})
    await store.record_changes({"A": {"Email": "s2"}})
    store = await reopen(store)
    try:
        assert await store.position() == (epoch, 2)
        assert await store.record_changes({"A": {"Email": "s3"}}) == 3
        assert await store.changes_since(2, ["A"]) == {"A": {"Email": "s3"}}
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_new_file_gets_new_epoch(tmp_path: Path, store: SQLiteStore) -> None:
    """A freshly created store has a different epoch, so old tokens are not trusted."""
    other = SQLiteStore(str(tmp_path / "other.sqlite"), reactor)
    await other.open()
    try:
        assert (await other.position())[0] != (await store.position())[0]
    finally:
        await other.close()


@pytest_twisted.ensureDeferred
async def test_record_changes_fire_in_call_order(store: SQLiteStore) -> None:
    """Publishes issued back to back fire in call order with increasing seqs."""
    fired: list[int] = []
    calls = [store.record_changes({"A": {"Email": f"s{i}"}}) for i in range(40)]
    for d in calls:
        d.addCallback(fired.append)
    await DeferredList(calls, fireOnOneErrback=True)
    assert fired == list(range(1, 41))
    assert await store.current_states(["A"]) == {"A": {"Email": "s39"}}


@pytest_twisted.ensureDeferred
async def test_record_changes_committed_when_fired(store: SQLiteStore, db_path: Path) -> None:
    """When record_changes fires, another connection already sees the change (committed)."""
    seq = await store.record_changes({"A": {"Email": "s1"}})
    with raw(db_path) as connection:
        row = connection.execute("SELECT state, seq FROM states WHERE account_id = 'A'").fetchone()
    assert row == ("s1", seq)


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


# -- metadata --


@pytest_twisted.ensureDeferred
async def test_meta(store: SQLiteStore) -> None:
    """Metadata values are stored, replaced, and None when absent."""
    assert await store.get_meta("vapid") is None
    await store.set_meta("vapid", "k1")
    await store.set_meta("vapid", "k2")
    assert await store.get_meta("vapid") == "k2"


def test_user_repr_hides_password_hash() -> None:
    """A User's repr never shows the password hash (it may end up in logs)."""
    assert "secret" not in repr(User("u1", "alice", "secret", "A1", 0.0))
