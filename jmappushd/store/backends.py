"""The storage backend named by ``[storage] backend``: preparing, creating, checking it.

The daemon, ``jmappushctl`` and the tests reach a backend only through these
functions, so adding one is one more entry in each table below and one more value
in ``config.STORAGE_BACKENDS``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorCore

from jmappushd.config import StorageConfig
from jmappushd.store.interface import IStore
from jmappushd.store.pgprep import (
    check_postgresql,
    connector_for,
    migrate_postgresql,
    prepare_postgresql,
)
from jmappushd.store.postgresql import PostgreSQLStore
from jmappushd.store.records import StoreError
from jmappushd.store.schema import MIGRATIONS as SQLITE_MIGRATIONS
from jmappushd.store.sqlite import SQLiteStore
from jmappushd.store.sqliteprep import prepare_sqlite


def _prepare_sqlite(config: StorageConfig) -> None:
    prepare_sqlite(config.path)


def _create_sqlite(config: StorageConfig, reactor: IReactorCore) -> IStore:
    return SQLiteStore(config.path, reactor)


def _create_postgresql(config: StorageConfig, reactor: IReactorCore) -> IStore:
    return PostgreSQLStore(connector_for(config), reactor, pool_size=config.pool_size)


def _migrate_sqlite(config: StorageConfig) -> tuple[int, int]:
    found = 0
    if os.path.exists(config.path):
        try:
            with sqlite3.connect(config.path) as connection:
                found = int(connection.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"{config.path}: cannot open the database: {exc}") from exc
    prepare_sqlite(config.path)
    return found, len(SQLITE_MIGRATIONS)


_PREPARE: Mapping[str, Callable[[StorageConfig], None]] = {
    "sqlite": _prepare_sqlite,
    "postgresql": prepare_postgresql,
}
_CREATE: Mapping[str, Callable[[StorageConfig, IReactorCore], IStore]] = {
    "sqlite": _create_sqlite,
    "postgresql": _create_postgresql,
}
# check-config: the file checks of SQLite are daemon/statedir.py's.
_CHECK: Mapping[str, Callable[[StorageConfig], list[str]]] = {
    "sqlite": lambda config: [],
    "postgresql": check_postgresql,
}
_MIGRATE: Mapping[str, Callable[[StorageConfig], tuple[int, int]]] = {
    "sqlite": _migrate_sqlite,
    "postgresql": migrate_postgresql,
}


def _lookup(table: Mapping[str, object], backend: str) -> None:
    if backend not in table:
        # config.py rejects unknown names; this guards a StorageConfig built by hand.
        raise StoreError(f"[storage] backend: unknown storage backend {backend!r}")


def prepare_store(config: StorageConfig) -> None:
    """Get the backend ready, synchronously, before the reactor runs: SQLite's file and
    schema; PostgreSQL's password file (the server may still be down: the daemon waits).

    Raises StoreError with a one-line message naming the path (or server).
    """
    _lookup(_PREPARE, config.backend)
    _PREPARE[config.backend](config)


def create_store(config: StorageConfig, reactor: IReactorCore) -> IStore:
    """A new, not yet opened, store for the configured backend."""
    _lookup(_CREATE, config.backend)
    return _CREATE[config.backend](config, reactor)


def check_store(config: StorageConfig) -> list[str]:
    """What would stop the daemon from using the store now, one line each (blocking)."""
    _lookup(_CHECK, config.backend)
    return _CHECK[config.backend](config)


def migrate_store(config: StorageConfig) -> tuple[int, int]:
    """Create or migrate the schema now: ``(version found, version now)``; StoreError else."""
    _lookup(_MIGRATE, config.backend)
    return _MIGRATE[config.backend](config)
