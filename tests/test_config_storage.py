"""[storage] for PostgreSQL: dsn, password-file and pool-size, each mistake one line naming
the file, the section and the key (and never echoing a DSN, which may hold a password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jmappushd.config import ConfigError, parse_config
from jmappushd.daemon.statedir import StateError, check_state, prepare_state
from jmappushd.store.backends import check_store, create_store, prepare_store
from jmappushd.store.postgresql import PostgreSQLStore

PATH = "/etc/jmappushd/test.ini"
PG = "[storage]\nbackend = postgresql\n"


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH, environ={})
    assert "\n" not in str(info.value)
    return str(info.value)


def test_postgresql_keys_and_defaults() -> None:
    """A URI or key=value DSN is accepted as written; pool-size defaults to 8; the password
    file is resolved against the config's folder."""
    config = parse_config(PG + "dsn = postgresql://jmap@db.example/jmap\n"
                          "password-file = db.password\n", PATH, environ={})
    storage = config.storage
    assert storage.backend == "postgresql" and storage.pool_size == 8
    assert storage.dsn == "postgresql://jmap@db.example/jmap"
    assert storage.password_file == "/etc/jmappushd/db.password"
    config = parse_config(PG + "dsn = host=/run/postgresql dbname=jmap\npool-size = 2\n",
                          PATH, environ={})
    assert config.storage.pool_size == 2


def test_bad_values_are_one_line_each() -> None:
    """Each refusal names file, [storage] and the key."""
    assert error(PG) == (f"{PATH}: [storage] dsn: required with backend = postgresql "
                         "(e.g. postgresql://jmappushd@db.example/jmappushd)")
    assert error(PG + "dsn = hots=db\n") == (
        f'{PATH}: [storage] dsn: invalid connection option "hots"')
    assert error(PG + "dsn = host=db\npool-size = 0\n") == (
        f"{PATH}: [storage] pool-size: must be at least 1: 0")
    assert error(PG + "dsn = host=db\npool-size = 101\n") == (
        f"{PATH}: [storage] pool-size: must be at most 100: 101")
    assert error("[storage]\ndsn = host=db\n") == (
        f"{PATH}: [storage] dsn: needs backend = postgresql")
    assert error("[storage]\npassword-file = /x\n") == (
        f"{PATH}: [storage] password-file: needs backend = postgresql")


def test_password_in_both_places_is_refused_without_echoing_it() -> None:
    """A password in the DSN and a password file: keep one; the secret is never shown."""
    message = error(PG + "dsn = postgresql://jmap:hunter2@db/jmap\npassword-file = /pw\n")
    assert message == (f"{PATH}: [storage] password-file: the dsn holds a password too; "
                       "keep it only in the password file")
    assert "hunter2" not in error(PG + "dsn = postgresql://jmap:hunter2@db/jmap?bad=1\n")


def test_prepare_refuses_a_bad_password_file_but_not_a_down_server(tmp_path: Path) -> None:
    """Before the reactor runs, only what no retry can fix stops the daemon: an unusable
    password file; an unreachable server is left to the core to wait for. SQLite's path
    is neither created nor checked."""
    password = tmp_path / "pw"
    password.write_text("secret\n")
    password.chmod(0o644)
    text = (f"[server]\nstate-dir = {tmp_path / 'state'}\n" + PG +
            "dsn = host=127.0.0.1 port=1 dbname=x connect_timeout=1\n"
            f"password-file = {password}\n")
    config = parse_config(text, str(tmp_path / "x.ini"), environ={})
    with pytest.raises(StateError, match=r"^\[storage\] password-file .*chmod 0600"):
        prepare_state(config)
    password.chmod(0o600)
    prepare_state(config)
    prepare_store(config.storage)
    assert check_state(config) == []
    assert not (tmp_path / "state" / "jmappushd.sqlite3").exists()
    [problem] = check_store(config.storage)
    assert problem.startswith("[storage] dsn: postgresql://127.0.0.1:1/x: ")
    from twisted.internet import reactor

    store = create_store(config.storage, reactor)
    assert isinstance(store, PostgreSQLStore)
