"""The PostgreSQL publish path's server-side cost (issue 13): a fold rewrites one
``states`` row per (account, type), and schema v4 leaves room on each page so that the
new version stays on the old one's page (a HOT update, no index entry). Checked on the
rows' physical places, which is what HOT means, not on a timing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor

from jmappushd.store.pgconnect import PgConnector
from jmappushd.store.postgresql import PostgreSQLStore
from tests.pg_server import PgServer

ACCOUNTS = [f"account-{i:05d}" for i in range(1_000)]


@pytest.fixture
def dsn(pg_server: PgServer) -> str:
    return pg_server.dsn(schema=pg_server.new_schema())


@pytest_twisted.async_yield_fixture
async def store(dsn: str) -> AsyncIterator[PostgreSQLStore]:
    opened = PostgreSQLStore(PgConnector(dsn, ""), reactor, pool_size=2)
    await opened.open()
    yield opened
    await opened.close()


def pages(dsn: str) -> dict[str, int]:
    """Each account's ``states`` row's heap page (the block number of its ctid)."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT account_id, (ctid::text::point)[0]::bigint FROM states").fetchall()
    return {str(account): int(page) for account, page in rows}


@pytest_twisted.ensureDeferred
async def test_a_publish_rewrites_states_in_place(store: PostgreSQLStore, dsn: str) -> None:
    """Two publishes of the same 1,000 accounts, each folded: every row's second version is
    on the page of its first (without the fillfactor the pages are full and most rows move)."""
    await store.record_changes({account: {"Email": "s1"} for account in ACCOUNTS})
    await store.fold()
    before = pages(dsn)
    await store.record_changes({account: {"Email": "s2"} for account in ACCOUNTS})
    await store.fold()
    after = pages(dsn)
    assert len(before) == len(ACCOUNTS)
    moved = [account for account in ACCOUNTS if after[account] != before[account]]
    assert moved == []
    assert (await store.current_states(ACCOUNTS[:1])) == {ACCOUNTS[0]: {"Email": "s2"}}


def test_the_states_table_keeps_half_of_each_page_free(store: PostgreSQLStore,
                                                       dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        row = connection.execute("SELECT reloptions FROM pg_class WHERE oid = 'states'::regclass"
                                 ).fetchone()
    assert row is not None
    assert row[0] == ["fillfactor=50"]
