"""Connections to the PostgreSQL server of ``[storage] dsn``, made one way for every user.

The store's pool, ``jmappushctl`` and (later) a LISTEN watcher all connect through
:class:`PgConnector`, so the password file, the connect timeout and the application
name are applied in one place. Connecting blocks: call :meth:`PgConnector.connect`
on a thread, never on the reactor. The password file is read at every connect, so
replacing it takes effect on the next reconnect without a restart.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict

from jmappushd.secretfile import read_secret_line
from jmappushd.store.records import StoreError, StoreUnavailable

# Seconds libpq waits for a server that does not answer, unless the DSN says otherwise:
# without it a black-holed address would hold a pool thread for the kernel's TCP timeout.
DEFAULT_CONNECT_TIMEOUT = 10
APPLICATION_NAME = "jmappushd"


def parse_dsn(dsn: str) -> dict[str, str]:
    """The DSN's parameters (libpq URI or key/value); ValueError with libpq's reason.

    The reason never repeats the DSN, which may hold a password.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "not a libpq DSN"
        raise ValueError(reason) from None
    return {key: str(value) for key, value in params.items() if value is not None}


def read_password_file(path: str) -> str:
    """The password: the one line of a file only its owner may read (StoreError else)."""
    try:
        return read_secret_line(path)
    except ValueError as exc:
        raise StoreError(f"[storage] password-file {exc}") from None


def describe(params: Mapping[str, str]) -> str:
    """``user@host:port/dbname`` for log lines and errors: never the password."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user", "")
    name = params.get("dbname", "")
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{name}"


def one_line(error: BaseException) -> str:
    """libpq's message, first line only (it adds hints and context on further lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PgConnector:
    """Opens connections to one database; thread-safe, holds no connection itself."""

    def __init__(self, dsn: str, password_file: str = "",
                 connect_timeout: int = DEFAULT_CONNECT_TIMEOUT) -> None:
        self._params = parse_dsn(dsn)
        self._params.setdefault("connect_timeout", str(connect_timeout))
        self._params.setdefault("application_name", APPLICATION_NAME)
        self._password_file = password_file
        self.name = describe(self._params)

    def check_password_file(self) -> None:
        """Raise StoreError if the password file is set but unusable."""
        if self._password_file:
            read_password_file(self._password_file)

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
        """A new connection (blocking). StoreUnavailable when the server cannot be reached
        or refuses us; StoreError when the password file is unusable."""
        params = dict(self._params)
        if self._password_file:
            params["password"] = read_password_file(self._password_file)
        try:
            connection = psycopg.connect(**params, autocommit=autocommit)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise StoreUnavailable(f"{self.name}: {one_line(exc)}") from None
        return connection
