"""PostgreSQL before the reactor runs: what twistd and ``jmappushctl`` check synchronously.

Unlike SQLite, preparing does not touch the database: a server that is down when
the daemon starts is waited for (the core retries opening the store), so only
what no retry can fix is refused here (an unusable password file). ``check`` and
``migrate`` connect, for ``jmappushctl check-config`` and ``jmappushctl migrate``.
"""

from __future__ import annotations

from jmappushd.config import StorageConfig
from jmappushd.store.pgconnect import PgConnector, one_line
from jmappushd.store.pgschema import MIGRATIONS, migrate, read_version
from jmappushd.store.records import SchemaTooNew, StoreError


def connector_for(config: StorageConfig) -> PgConnector:
    return PgConnector(config.dsn, config.password_file)


def prepare_postgresql(config: StorageConfig) -> None:
    """Refuse what waiting cannot fix: the password file (StoreError, one line)."""
    connector_for(config).check_password_file()


def check_postgresql(config: StorageConfig) -> list[str]:
    """Why the daemon could not use the database now, one line each (empty: usable).

    Connects once (blocking) and reads the schema version without changing anything.
    """
    connector = connector_for(config)
    try:
        connection = connector.connect()
    except StoreError as exc:
        return [f"[storage] dsn: {exc}"]
    try:
        found = read_version(connection)
    except Exception as exc:
        return [f"[storage] dsn: {connector.name}: cannot read the schema version: "
                f"{one_line(exc)}"]
    finally:
        connection.close()
    if found > len(MIGRATIONS):
        return [f"[storage] dsn: {connector.name}: {SchemaTooNew(found, len(MIGRATIONS))}"]
    return []


def migrate_postgresql(config: StorageConfig) -> tuple[int, int]:
    """Bring the schema up to date now; ``(version found, version now)``. StoreError else."""
    connector = connector_for(config)
    connection = connector.connect()
    try:
        return migrate(connection)
    except SchemaTooNew as exc:
        raise StoreError(f"{connector.name}: {exc}") from exc
    except Exception as exc:
        raise StoreError(f"{connector.name}: migration failed: {one_line(exc)}") from exc
    finally:
        connection.close()
