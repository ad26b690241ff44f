"""The PostgreSQL store's fold (issue 13, CPU per change): a publish appends to the log
only, ``states`` is folded from it afterwards, and every catch-up still sees every
change, so a Last-Event-ID or pushState resumes exactly whether or not its changes are
folded yet (ES-10, WS-19). The tail's bookkeeping is tested in memory; the store
against a real server, with several store objects standing in for nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from jmappushd.store.pgconnect import PgConnector
from jmappushd.store.pgschema import MIGRATIONS, migrate
from jmappushd.store.pgtail import UnfoldedTail
from jmappushd.store.postgresql import PostgreSQLStore
from jmappushd.store.rules import publish_json
from tests.pg_server import PgServer

# -- the tail, in memory --


def test_high_follows_contiguous_entries_only() -> None:
    """``high`` moves over entries without a gap; an entry above a gap waits until the
    gap is filled by a read."""
    tail = UnfoldedTail(folded=10)
    tail.add(11, {"A": {"Email": "a11"}})
    tail.add(13, {"B": {"Email": "b13"}})
    assert tail.high == 11
    assert tail.newest_seq == 13
    tail.add_read(11, [(12, {"C": {"Email": "c12"}})])
    assert tail.high == 13
    tail.add_read(13, [], upto=20)  # a read from the log up to its top found nothing
    assert tail.high == 20


def test_entries_at_or_below_the_mark_are_ignored_and_trimmed() -> None:
    tail = UnfoldedTail(folded=5)
    tail.add(5, {"A": {"Email": "old"}})
    assert len(tail) == 0
    tail.add(6, {"A": {"Email": "a6"}})
    tail.add(7, {"A": {"Email": "a7", "Mailbox": "m7"}})
    assert tail.changes == 3
    tail.advance_folded(6)
    assert len(tail) == 1 and tail.changes == 2
    got: dict[str, dict[str, str]] = {}
    tail.overlay(got, ["A"], None)
    assert got == {"A": {"Email": "a7", "Mailbox": "m7"}}
    tail.advance_folded(7)
    assert len(tail) == 0 and tail.changes == 0
    got = {}
    tail.overlay(got, ["A"], None)
    assert got == {}


def test_fold_rows_hold_the_newest_state_up_to_high() -> None:
    """A pair changed twice folds once, with its newest state; an entry above a gap is
    left for a later fold."""
    tail = UnfoldedTail(folded=0)
    tail.add(1, {"A": {"Email": "a1"}, "B": {"Email": "b1"}})
    tail.add(2, {"A": {"Email": "a2"}})
    rows = tail.fold_rows()
    assert (rows.base, rows.upto) == (0, 2)
    assert sorted(zip(rows.accounts, rows.types, rows.states, rows.seqs, strict=True)) == [
        ("A", "Email", "a2", 2), ("B", "Email", "b1", 1)]
    tail.add(4, {"A": {"Email": "a4"}})  # 3 not read yet
    rows = tail.fold_rows()
    assert rows.upto == 2
    assert dict(zip(rows.accounts, rows.states, strict=True))["A"] == "a2"


def test_fold_rows_above_a_mark_another_node_moved() -> None:
    """Rows at or below a mark another node moved are not written again."""
    tail = UnfoldedTail(folded=0)
    tail.add(1, {"A": {"Email": "a1"}})
    tail.add(2, {"B": {"Email": "b2"}})
    rows = tail.fold_rows()
    assert rows.above(0) is rows
    later = rows.above(1)
    assert (later.base, later.upto, later.accounts, later.seqs) == (1, 2, ["B"], [2])
    assert len(rows.above(2)) == 0


def test_overlay_takes_only_what_changed_after() -> None:
    tail = UnfoldedTail(folded=0)
    tail.add(1, {"A": {"Email": "a1"}})
    tail.add(2, {"A": {"Mailbox": "m2"}})
    got: dict[str, dict[str, str]] = {"A": {"Email": "folded"}}
    tail.overlay(got, ["A", "Z"], 1)
    assert got == {"A": {"Email": "folded", "Mailbox": "m2"}}


def test_own_entries_are_held_as_text_and_parsed_only_when_needed() -> None:
    """This node's publishes are held as the JSON it logged; a fold that takes them all
    drops them unparsed, a lookup parses them."""
    tail = UnfoldedTail(folded=0)
    tail.add_text(1, '{"A":{"Email":"a1"}}', 1)
    tail.add_text(2, '{"A":{"Email":"a2"},"B":{"Email":"b2"}}', 2)
    assert tail.changes == 3 and tail.high == 2
    got: dict[str, dict[str, str]] = {}
    tail.overlay(got, ["A", "B"], None)
    assert got == {"A": {"Email": "a2"}, "B": {"Email": "b2"}}
    tail.add_text(3, '{"C":{"Email":"c3"}}', 1)
    tail.advance_folded(3)
    assert len(tail) == 0 and tail.changes == 0
    got = {}
    tail.overlay(got, ["A", "B", "C"], None)
    assert got == {}


def test_a_publish_is_logged_as_checked_json() -> None:
    """What a store logging whole publishes refuses, as flatten refuses it; accounts with
    no state are left out of the text."""
    assert publish_json({"A": {"Email": "s", "Mailbox": "m"}, "B": {}}) == (
        '{"A":{"Email":"s","Mailbox":"m"}}', 2)
    with pytest.raises(ValueError):
        publish_json({"A": {}})
    with pytest.raises(TypeError):
        publish_json({"A": {"Email": 1}})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        publish_json({1: {"Email": "s"}})  # type: ignore[dict-item]


# -- the store, on a real server --


@pytest.fixture
def dsn(pg_server: PgServer) -> str:
    return pg_server.dsn(schema=pg_server.new_schema())


def node(dsn: str, **kwargs: object) -> PostgreSQLStore:
    return PostgreSQLStore(PgConnector(dsn, ""), reactor, pool_size=2, **kwargs)  # type: ignore[arg-type]


@pytest_twisted.async_yield_fixture
async def nodes(dsn: str) -> AsyncIterator[list[PostgreSQLStore]]:
    stores = [node(dsn, clock=task.Clock()), node(dsn, clock=task.Clock())]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


def table(dsn: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute("SELECT account_id, type, state FROM states").fetchall()
    return {(str(a), str(t)): str(s) for a, t, s in rows}


def mark(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as connection:
        row = connection.execute("SELECT folded FROM change_fold").fetchone()
    assert row is not None
    return int(row[0])


@pytest_twisted.ensureDeferred
async def test_a_publish_is_seen_before_and_after_its_fold(nodes: list[PostgreSQLStore],
                                                           dsn: str) -> None:
    """The publish writes the log only; catch-ups on this node and on another that has
    not read the log yet see it at once; the fold writes each pair's newest state."""
    a, b = nodes
    await a.record_changes({"A": {"Email": "s1"}, "B": {"Email": "b1"}})
    await a.record_changes({"A": {"Email": "s2"}})
    assert table(dsn) == {}
    for store in (a, b):
        assert await store.current_states(["A", "B"]) == {"A": {"Email": "s2"},
                                                           "B": {"Email": "b1"}}
        assert await store.changes_since(1, ["A", "B"]) == {"A": {"Email": "s2"}}
    assert await a.fold() == 2
    assert table(dsn) == {("A", "Email"): "s2", ("B", "Email"): "b1"}
    assert a.unfolded_changes == 0
    for store in (a, b):
        assert await store.current_states(["A", "B"]) == {"A": {"Email": "s2"},
                                                           "B": {"Email": "b1"}}
        assert await store.changes_since(1, ["A", "B"]) == {"A": {"Email": "s2"}}
        assert await store.changes_since(2, ["A", "B"]) == {}


@pytest_twisted.ensureDeferred
async def test_a_node_behind_never_folds_an_older_state_over_a_newer(
        nodes: list[PostgreSQLStore], dsn: str) -> None:
    """B holds A's first state of X; A publishes again and folds; B's fold then writes only
    what lies above A's mark, and its trimmed tail still answers right."""
    a, b = nodes
    await a.record_changes({"X": {"Email": "x1"}})
    assert len(await b.changes_after(0)) == 1  # B's bus read: B holds seq 1
    await a.record_changes({"X": {"Email": "x2"}})
    assert await a.fold() == 2
    await b.record_changes({"Y": {"Email": "y3"}})  # seq 3; B reads the gap at its fold
    assert await b.fold() == 3
    assert table(dsn) == {("X", "Email"): "x2", ("Y", "Email"): "y3"}
    assert await b.current_states(["X", "Y"]) == {"X": {"Email": "x2"}, "Y": {"Email": "y3"}}
    assert await a.fold() == 2  # A holds nothing: no transaction at all
    assert len(await a.changes_after(2)) == 1  # A's bus reads B's publish
    assert await a.fold() == 3  # B folded it already: A only learns the mark
    assert a.unfolded_changes == 0 and b.unfolded_changes == 0


@pytest_twisted.ensureDeferred
async def test_reads_called_around_a_fold_are_right(nodes: list[PostgreSQLStore]) -> None:
    """Reads issued before and after a fold, none awaited first (the trim happens in call
    order), all see the newest state."""
    a, _ = nodes
    for i in range(5):
        await a.record_changes({"A": {"Email": f"s{i}"}, f"P{i}": {"Email": "p"}})
    accounts = ["A", *(f"P{i}" for i in range(5))]
    reads = [a.current_states(accounts), a.changes_since(3, ["A"])]
    folded = a.fold()
    reads += [a.current_states(accounts), a.changes_since(3, ["A"])]
    answers = await defer.gatherResults(reads)
    assert await folded == 5
    want = {"A": {"Email": "s4"}} | {f"P{i}": {"Email": "p"} for i in range(5)}
    assert answers == [want, {"A": {"Email": "s4"}}, want, {"A": {"Email": "s4"}}]


@pytest_twisted.ensureDeferred
async def test_folds_are_timed_and_idle_costs_no_timer(dsn: str) -> None:
    """Nothing waits: no timer. A publish schedules one fold after fold_interval; enough
    waiting changes fold at once."""
    clock = task.Clock()
    store = node(dsn, clock=clock, fold_interval=1.0, fold_at=3)
    await store.open()
    try:
        assert clock.getDelayedCalls() == []
        await store.record_changes({"A": {"Email": "s1"}})
        [call] = clock.getDelayedCalls()
        assert call.getTime() == pytest.approx(1.0)
        await store.record_changes({"B": {"Email": "b"}, "C": {"Email": "c"}})
        [call] = clock.getDelayedCalls()
        assert call.getTime() == pytest.approx(0.0)  # 3 changes wait: at once
        clock.advance(0)
        assert await store.fold() == 2  # the timed fold is in flight; this one follows it
        assert store.unfolded_changes == 0
        assert table(dsn) == {("A", "Email"): "s1", ("B", "Email"): "b", ("C", "Email"): "c"}
        assert clock.getDelayedCalls() == []
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_close_folds_and_a_new_node_loads_what_is_unfolded(dsn: str) -> None:
    """A store object folds at close (jmappushctl's publish); one opened while changes
    wait unfolded holds them, so it can fold them."""
    first = node(dsn, clock=task.Clock())
    await first.open()
    await first.record_changes({"A": {"Email": "s1"}})
    second = node(dsn, clock=task.Clock())
    await second.open()
    try:
        assert second.unfolded_changes == 1
        await first.close()
        assert table(dsn) == {("A", "Email"): "s1"} and mark(dsn) == 1
        assert await second.fold() == 1
        assert second.unfolded_changes == 0
    finally:
        await second.close()


def test_a_log_row_of_a_publish_is_stored_as_written(dsn: str) -> None:
    """Schema v6: rows of up to about 8 KB are neither compressed nor moved out of line."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        migrate(connection)
        row = connection.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'changes'::regclass").fetchone()
    assert row is not None and row[0] == ["toast_tuple_target=8160"]


def test_the_fold_mark_of_an_older_database_starts_at_its_top(dsn: str) -> None:
    """Before v5 ``states`` was current at every commit: the migration puts the mark at
    the log's top, so nothing is folded twice and nothing is missed."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        migrate(connection, MIGRATIONS[:4])
        connection.execute("UPDATE change_seq SET seq = 42")
        assert migrate(connection) == (4, len(MIGRATIONS))
    assert mark(dsn) == 42
