"""The daemon says which release runs: one info line at start and ``/health``."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

import jmappushd
from jmappushd import versions
from tests.support import LiveDaemon, log_into, make_config, start_daemon, stop_daemon


def test_versions_come_from_metadata_with_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed metadata first; without it the module's __version__ (never an exception)."""
    assert versions.daemon_version() == metadata.version("jmappushd")
    assert versions.library_versions()["Twisted"] == metadata.version("Twisted")

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    import autobahn
    import cryptography

    import twisted

    assert versions.daemon_version() == jmappushd.__version__
    found = versions.library_versions()
    assert found["Twisted"] == twisted.__version__
    assert found["autobahn"] == getattr(autobahn, "__version__")  # noqa: B009 - not re-exported
    assert found["cryptography"] == cryptography.__version__
    assert versions.distribution_version("no-such-dist", "no_such_module") == "unknown"


@pytest_twisted.ensureDeferred
async def test_start_logs_the_versions_once(tmp_path: Path) -> None:
    """Start-up logs one info line with jmappushd's, Twisted's, Autobahn's and
    cryptography's versions."""
    events: list[LogEvent] = []
    observer = log_into(events)
    globalLogPublisher.addObserver(observer)
    try:
        daemon = await start_daemon(make_config(tmp_path))
        await stop_daemon(daemon)
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = [formatEvent(e) for e in events if "cryptography" in e.get("log_format", "")]
    libraries = versions.library_versions()
    assert lines == [f"jmappushd {versions.daemon_version()} (Twisted {libraries['Twisted']}, "
                     f"Autobahn {libraries['autobahn']}, cryptography "
                     f"{libraries['cryptography']}, Python {libraries['Python']})"]
    assert all(e["log_level"].name == "info" for e in events
               if "cryptography" in e.get("log_format", ""))


@pytest_twisted.ensureDeferred
async def test_health_reports_the_version(live: LiveDaemon) -> None:
    """/health carries the daemon's version next to its status."""
    response = await treq.get(live.admin + "/health")
    body: dict[str, Any] = await response.json()
    assert response.code == 200
    assert body["status"] == "ok" and body["version"] == versions.daemon_version()
