"""[storage] backend and the backend factory: preparing and creating the configured store."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from jmappushd.config import ConfigError, StorageConfig, parse_config
from jmappushd.daemon.service import StateError, prepare_state
from jmappushd.store import IStore, SQLiteStore, StoreError
from jmappushd.store.backends import create_store, prepare_store
from jmappushd.store.schema import MIGRATIONS

PATH = "/etc/jmappushd/test.ini"


def test_backend_defaults_to_sqlite() -> None:
    """Without a [storage] backend key the SQLite backend is used; the value is
    case-insensitive."""
    assert parse_config("", PATH, environ={}).storage.backend == "sqlite"
    config = parse_config("[storage]\nbackend = SQLite\n", PATH, environ={})
    assert config.storage.backend == "sqlite"


def test_unknown_backend_is_a_config_error() -> None:
    """An unknown backend is one line naming the file, the section and the key."""
    with pytest.raises(ConfigError) as info:
        parse_config("[storage]\nbackend = postgres\n", PATH, environ={})
    assert str(info.value) == (f"{PATH}: [storage] backend: must be one of sqlite, "
                               "postgresql: 'postgres'")


def test_prepare_store_creates_the_schema_privately(tmp_path: Path) -> None:
    """prepare_store (before the reactor runs) creates the folder 0700 and the file 0600 at
    the current schema version, and is idempotent."""
    path = tmp_path / "state" / "db.sqlite3"
    config = StorageConfig(backend="sqlite", path=str(path))
    prepare_store(config)
    prepare_store(config)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_prepare_store_names_the_path_on_failure(tmp_path: Path) -> None:
    """A newer schema or an unusable path is a one-line StoreError naming the path."""
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as connection:
        connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError) as info:
        prepare_store(StorageConfig(path=str(newer)))
    assert str(info.value).startswith(f"{newer}: database schema version")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError) as info:
        prepare_store(StorageConfig(path=str(blocker / "db.sqlite3")))
    assert str(blocker) in str(info.value) and "\n" not in str(info.value)
    directory = tmp_path / "dir.sqlite3"
    directory.mkdir()
    with pytest.raises(StoreError) as info:
        prepare_store(StorageConfig(path=str(directory)))
    assert str(info.value).startswith(f"{directory}: cannot open the database")


def test_prepare_state_reports_store_errors_as_state_errors(tmp_path: Path) -> None:
    """prepare_state still creates the state dir and admin token, then passes the backend's
    failure on as the StateError twistd and jmappushctl print."""
    text = (f"[server]\nstate-dir = {tmp_path / 'state'}\n"
            f"[storage]\npath = {tmp_path / 'dir.sqlite3'}\n")
    (tmp_path / "dir.sqlite3").mkdir()
    config = parse_config(text, str(tmp_path / "x.ini"), environ={})
    with pytest.raises(StateError) as info:
        prepare_state(config)
    assert "cannot open the database" in str(info.value)
    assert os.path.exists(config.admin.token_file)


def test_create_store_builds_the_configured_backend(tmp_path: Path) -> None:
    """create_store returns an unopened store of the configured backend providing IStore;
    a hand-built config naming an unknown backend is a StoreError."""
    store = create_store(StorageConfig(path=str(tmp_path / "db.sqlite3")), reactor)
    assert isinstance(store, SQLiteStore) and verifyObject(IStore, store)
    assert not (tmp_path / "db.sqlite3").exists()
    with pytest.raises(StoreError, match="unknown storage backend 'nosuch'"):
        create_store(StorageConfig(backend="nosuch"), reactor)
    with pytest.raises(StoreError, match=r"\[storage\] backend"):
        prepare_store(StorageConfig(backend="nosuch"))
