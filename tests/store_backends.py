"""The store backends the conformance suite runs against, one fixture param each.

Test modules import ``backend_fixture`` and ``store_fixture`` and take the
fixtures as ``backend`` and ``store``.

Each backend is one ``Backend`` in ``BACKENDS``: ``make`` returns a new, unopened
store object on the backend's data for this test (called again, on the *same* data
when ``persists``), ``fresh`` one on new data. PostgreSQL's data is a new schema of
the session's private server (tests/pg_server.py), so it skips (or fails under
CI=true) where that server cannot run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from jmappushd.store import IStore, MemoryStore, PushSubscription, SQLiteStore
from jmappushd.store import sqlite as sqlite_store
from jmappushd.store.pgconnect import PgConnector
from jmappushd.store.postgresql import PostgreSQLStore
from tests.pg_server import PgServer

T = TypeVar("T")
Maker = Callable[[IReactorTime | None], IStore]


@dataclass(frozen=True)
class Backend:
    """How to make stores of one backend for one test."""

    name: str
    make: Maker  # same data each call (when persists)
    fresh: Maker  # new, empty data each call
    persists: bool


def sqlite_backend(tmp_path: Path, *, fold_every: int | None = None) -> Backend:
    """``fold_every``: fold the change log after that many publishes (and states), so
    the suite's reads meet folded states, the log, and both at once."""
    counter = iter(range(1_000_000))
    states = sqlite_store.FOLD_STATES if fold_every is None else fold_every
    publishes = sqlite_store.FOLD_PUBLISHES if fold_every is None else fold_every

    def on(path: Path) -> Maker:
        return lambda clock: SQLiteStore(str(path), reactor, clock=clock,
                                         fold_states=states, fold_publishes=publishes)

    def fresh(clock: IReactorTime | None) -> IStore:
        return on(tmp_path / f"fresh{next(counter)}.sqlite")(clock)

    name = "sqlite" if fold_every is None else f"sqlite-fold{fold_every}"
    return Backend(name, on(tmp_path / "state" / "store.sqlite"), fresh, persists=True)


def memory_backend(tmp_path: Path) -> Backend:
    return Backend("memory", MemoryStore, MemoryStore, persists=False)


def postgresql_backend(server: PgServer, pool_size: int = 4) -> Backend:
    def on(schema: str) -> Maker:
        connector = PgConnector(server.dsn(schema=schema))
        return lambda clock: PostgreSQLStore(connector, reactor, pool_size=pool_size,
                                             clock=clock)

    def fresh(clock: IReactorTime | None) -> IStore:
        return on(server.new_schema())(clock)

    return Backend("postgresql", on(server.new_schema()), fresh, persists=True)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "sqlite": lambda request, tmp_path: sqlite_backend(tmp_path),
    "sqlite-fold2": lambda request, tmp_path: sqlite_backend(tmp_path, fold_every=2),
    "memory": lambda request, tmp_path: memory_backend(tmp_path),
    # The session's server is started only when a PostgreSQL case runs.
    "postgresql": lambda request, tmp_path: postgresql_backend(
        request.getfixturevalue("pg_server")),
}


@pytest.fixture(name="backend", params=sorted(BACKENDS))
def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](request, tmp_path)


@pytest_twisted.async_yield_fixture(name="store")
async def store_fixture(backend: Backend) -> AsyncIterator[IStore]:
    opened = backend.make(None)
    await opened.open()
    yield opened
    await opened.close()


DIGEST_1 = bytes(range(32))
DIGEST_2 = bytes(range(1, 33))


def subscription(sub_id: str, user_id: str, credential: str, **changes: object
                 ) -> PushSubscription:
    """A stored-subscription record with test defaults."""
    base = PushSubscription(
        id=sub_id, user_id=user_id, credential_id=credential, device_client_id="dev",
        url=f"https://push.example/{sub_id}-endpoint", keys_p256dh="P", keys_auth="A",
        verification_code="code-" + sub_id, verified=False, client_verification_code=None,
        expires=1000.0, types=("Email",), vapid_key_id="k1", created=10.0)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def counting_ids() -> Callable[[str], str]:
    """Predictable ids for a MemoryStore: u1, u2, ... for users, t1, ... for tokens."""
    counts: dict[str, int] = {}

    def make_id(prefix: str) -> str:
        counts[prefix] = counts.get(prefix, 0) + 1
        return f"{prefix}{counts[prefix]}"

    return make_id


def open_memory_store(clock: IReactorTime | None = None, *, predictable_ids: bool = True
                      ) -> MemoryStore:
    """An opened MemoryStore (it opens at once), with counting ids unless asked not to."""
    store = (MemoryStore(clock, make_id=counting_ids()) if predictable_ids
             else MemoryStore(clock))
    store.open()
    return store


def fired(d: Deferred[T]) -> T:
    """The result of a Deferred that has already fired (the memory store's do at once)."""
    results: list[T] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert results, "the Deferred has not fired"
    return results[0]
