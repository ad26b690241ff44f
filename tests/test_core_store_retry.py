"""The core waits for a store that cannot be reached at start (issue 13): it retries with
back-off on the injected clock, logs each failure, /health answers 503 meanwhile, a stop
ends the wait, and anything but StoreUnavailable fails the start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import Logger

from jmappushd.core.signal import StartAbandoned
from jmappushd.daemon.core import CoreService
from jmappushd.daemon.service import build_app
from jmappushd.store import MemoryStore, SchemaTooNew, StoreUnavailable
from jmappushd.web.admin import build_admin_root
from tests.support import log_into, make_config, no_threads


class UnreachableStore(MemoryStore):
    """A memory store whose first ``failures`` opens fail as an unreachable server would."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0
        self.error = error

    def open(self) -> Deferred[None]:
        self.attempts += 1
        if self.attempts <= self.failures:
            return fail(self.error or StoreUnavailable("postgresql://db:5432/x: refused"))
        return super().open()


def core_for(tmp_path: Path, store: MemoryStore) -> tuple[CoreService, Clock, Any]:
    clock = Clock()
    app = build_app(make_config(tmp_path), clock, store, no_threads)
    return CoreService(app), clock, app


def health(app: Any) -> tuple[int, dict[str, Any]]:
    client: Any = StubTreq(build_admin_root(app, None))
    response = client.get("http://admin/health")
    client.flush()
    done: list[Any] = []
    response.addCallback(done.append)
    client.flush()
    body: list[bytes] = []
    client.content(done[0]).addCallback(body.append)
    client.flush()
    return done[0].code, json.loads(body[0])


def test_unreachable_store_is_retried_with_backoff(tmp_path: Path) -> None:
    """Attempts at 0, 1, 3, 7 s (1 s doubling); each failure is logged with the server and
    the wait; /health says not ready until the store opens, then ok."""
    store = UnreachableStore(failures=3)
    core, clock, app = core_for(tmp_path, store)
    events: list[dict[str, Any]] = []
    core.log = Logger(observer=log_into(events))
    started: list[object] = []
    core.startService()
    core.when_started().addBoth(started.append)
    assert store.attempts == 1 and started == []
    status, body = health(app)
    assert status == 503 and "not ready" in body["detail"]
    for seconds, attempts in ((1, 2), (2, 3), (3, 3), (4, 4)):
        clock.advance(seconds)
        assert store.attempts == attempts
    assert started == [None]
    warnings = [e for e in events if "store unavailable" in e["log_format"]]
    assert [e["delay"] for e in warnings] == [1.0, 2.0, 4.0]
    assert "postgresql://db:5432/x" in warnings[0]["reason"]
    assert health(app)[0] == 200
    core.stopService()


def test_backoff_is_capped_at_thirty_seconds(tmp_path: Path) -> None:
    """The wait between attempts doubles up to 30 s and stays there."""
    store = UnreachableStore(failures=10)
    core, clock, _ = core_for(tmp_path, store)
    core.startService()
    waits = []
    for _ in range(8):
        [call] = clock.getDelayedCalls()
        waits.append(call.getTime() - clock.seconds())
        clock.advance(waits[-1])
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    core.stopService()


def test_stop_ends_the_wait(tmp_path: Path) -> None:
    """Stopping while the store is still unreachable cancels the retry timer and fails
    the start with StartAbandoned, so nothing waits for it forever."""
    store = UnreachableStore(failures=100)
    core, clock, _ = core_for(tmp_path, store)
    started: list[Any] = []
    core.startService()
    core.when_started().addErrback(started.append)
    stopped: list[object] = []
    core.stopService().addBoth(stopped.append)
    assert stopped == [None]
    assert started[0].check(StartAbandoned)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("error", [SchemaTooNew(9, 1), RuntimeError("broken")])
def test_other_open_failures_fail_the_start(tmp_path: Path, error: Exception) -> None:
    """Only StoreUnavailable is waited for: a newer schema fails the start at once."""
    store = UnreachableStore(failures=1, error=error)
    core, clock, _ = core_for(tmp_path, store)
    started: list[Any] = []
    core.startService()
    core.when_started().addErrback(started.append)
    assert started[0].check(type(error))
    assert clock.getDelayedCalls() == [] and store.attempts == 1
    core.stopService()
