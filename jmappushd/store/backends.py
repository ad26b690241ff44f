"""The storage backend named by ``[storage] backend``: preparing and creating it.

The daemon, ``jmappushctl`` and the tests reach a backend only through these two
functions, so adding one (PostgreSQL) is one more entry in each table below and
one more value in ``config.STORAGE_BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorCore

from jmappushd.config import StorageConfig
from jmappushd.store.interface import IStore
from jmappushd.store.records import StoreError
from jmappushd.store.sqlite import SQLiteStore
from jmappushd.store.sqliteprep import prepare_sqlite


def _prepare_sqlite(config: StorageConfig) -> None:
    prepare_sqlite(config.path)


def _create_sqlite(config: StorageConfig, reactor: IReactorCore) -> IStore:
    return SQLiteStore(config.path, reactor)


_PREPARE: Mapping[str, Callable[[StorageConfig], None]] = {"sqlite": _prepare_sqlite}
_CREATE: Mapping[str, Callable[[StorageConfig, IReactorCore], IStore]] = {
    "sqlite": _create_sqlite,
}


def _lookup(table: Mapping[str, object], backend: str) -> None:
    if backend not in table:
        # config.py rejects unknown names; this guards a StorageConfig built by hand.
        raise StoreError(f"[storage] backend: unknown storage backend {backend!r}")


def prepare_store(config: StorageConfig) -> None:
    """Create or migrate the backend's schema, synchronously, before the reactor runs.

    Raises StoreError with a one-line message naming the path (or server).
    """
    _lookup(_PREPARE, config.backend)
    _PREPARE[config.backend](config)


def create_store(config: StorageConfig, reactor: IReactorCore) -> IStore:
    """A new, not yet opened, store for the configured backend."""
    _lookup(_CREATE, config.backend)
    return _CREATE[config.backend](config, reactor)
