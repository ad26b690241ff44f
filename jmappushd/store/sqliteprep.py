"""Preparing the SQLite file before the reactor starts (twistd, ``jmappushctl``).

Run synchronously from ``prepare_store`` so an unusable path or a newer schema
stops the program with one line before any port is bound.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from jmappushd.store.records import SchemaTooNew, StoreError
from jmappushd.store.schema import configure_connection, migrate


def prepare_sqlite(path: str) -> None:
    """Create the folder and the file (0600), then create or migrate the schema."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreError(f"{exc.filename}: {exc.strerror}") from exc
    try:
        _migrate_file(path)
    except SchemaTooNew as exc:
        raise StoreError(f"{path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc


def _migrate_file(path: str) -> None:
    old_umask = os.umask(0o077)
    try:
        connection = sqlite3.connect(path, isolation_level=None)
    finally:
        os.umask(old_umask)
    try:
        configure_connection(connection, "NORMAL", 5000)
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            migrate(cursor)
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
    finally:
        connection.close()
