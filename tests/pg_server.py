"""A private PostgreSQL 15 (Debian's packages) in a temporary folder, for the store tests.

``initdb`` and ``pg_ctl`` run as the ``postgres`` system user when the tests run as
root (CI does; PostgreSQL refuses to run as root), else as the current user. The
server listens on 127.0.0.1 on a free port and on a Unix socket in its folder:
local (socket) connections are trusted, TCP ones need a password (SCRAM), so the
daemon's ``password-file`` is exercised for real. fsync is off: the tests want
speed, not durability across power loss.

Each conformance test gets a fresh schema (``CREATE SCHEMA`` is far cheaper than
``CREATE DATABASE``) and reaches it through ``options=-csearch_path=...``.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.support import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
ROLE, ROLE_PASSWORD = "jmap", "jmap-test-pw"


def pg_missing() -> str | None:
    """Why a private PostgreSQL cannot run here, or None."""
    for name in ("initdb", "pg_ctl", "postgres"):
        if not (BIN / name).exists():
            return f"{BIN / name} is missing (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (util-linux)"
    return None


def require_postgresql() -> None:
    """Skip (or, under CI=true, fail) when a private PostgreSQL cannot be started."""
    reason = pg_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason} (.ci/run installs it)")
    pytest.skip(f"PostgreSQL not available: {reason}")


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@dataclass
class PgServer:
    """One postmaster on its own data folder; ``start``/``stop`` may be repeated."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jmappushd-pg-")))
    port: int = field(default_factory=free_port)
    # More ``postgres -c`` settings (the benchmarks load pg_stat_statements this way).
    options: str = ""
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def init(self) -> None:
        """initdb, a password for the test role's TCP logins, and start."""
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        os.chmod(self.root, 0o700)
        subprocess.run(
            _as_owner([str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                       "--locale=C.UTF-8", "--no-sync"]),
            check=True, capture_output=True, timeout=120)
        self.start()
        with self.connect() as connection:
            connection.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'".encode())
            connection.execute(f"CREATE DATABASE {ROLE} OWNER {ROLE}".encode())

    def start(self, wait: bool = True) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=300")
        if self.options:
            options += " " + self.options
        argv = [str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path),
                "-o", options, "start"]
        subprocess.run(_as_owner([*argv, "-w" if wait else "-W"]), check=True,
                       capture_output=True, timeout=120)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_owner([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode,
                                  "stop"]), capture_output=True, timeout=120)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", schema: str = "") -> str:
        """A superuser DSN over the trusted Unix socket."""
        text = f"host={self.root} port={self.port} user=postgres dbname={dbname}"
        return text + (f" options=-csearch_path={schema}" if schema else "")

    def tcp_dsn(self, dbname: str = ROLE) -> str:
        """The test role's DSN over TCP: its password must come from elsewhere."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def new_schema(self) -> str:
        """A new, empty schema in the ``postgres`` database; returns its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with self.connect() as connection:
            connection.execute(f"CREATE SCHEMA {name}".encode())
        return name

    def new_database(self) -> str:
        """A new, empty database owned by the test role; returns its name."""
        name = f"d{os.getpid()}_{next(self._names)}"
        with self.connect() as connection:
            connection.execute(f"CREATE DATABASE {name} OWNER {ROLE}".encode())
        return name

    def wait_accepting(self, timeout: float = 30.0) -> None:
        """Poll until the server accepts a connection (after ``start(wait=False)``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def start_private_server() -> PgServer:
    """A fresh, running server (the caller destroys it); skips or fails as above."""
    require_postgresql()
    server = PgServer()
    try:
        server.init()
    except (subprocess.SubprocessError, psycopg.Error) as exc:
        log = server.log()
        server.destroy()
        detail = getattr(exc, "stderr", b"") or b""
        reason = f"cannot start a private PostgreSQL: {exc} {detail!r} {log[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return server
