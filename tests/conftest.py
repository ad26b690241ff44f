"""pytest fixtures shared by the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.pg_server import PgServer, start_private_server
from tests.support import LiveDaemon, make_config, start_daemon, stop_daemon


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveDaemon]:
    """An in-process daemon on free loopback ports, stopped after the test."""
    daemon = pytest_twisted.blockon(defer.ensureDeferred(start_daemon(make_config(tmp_path))))
    yield daemon
    pytest_twisted.blockon(defer.ensureDeferred(stop_daemon(daemon)))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One private PostgreSQL for the whole run, started on first use (tests/pg_server.py)."""
    server = start_private_server()
    yield server
    server.destroy()
