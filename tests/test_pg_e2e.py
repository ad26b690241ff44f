"""End to end on PostgreSQL: ``twistd -n jmappushd`` and ``jmappushctl`` as subprocesses
with ``[storage] backend = postgresql`` (over TCP, the password in a 0600 file), real
HTTP clients, and a private server (tests/pg_server.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from jmappushd.store.pgschema import MIGRATIONS
from tests.daemon_process import DaemonProcess
from tests.pg_server import ROLE_PASSWORD, PgServer, start_private_server
from tests.support import basic
from tests.test_eventsource_live import es_url, open_stream


def pg_daemon(tmp_path: Path, server: PgServer, dbname: str, extra: str = "") -> DaemonProcess:
    password = tmp_path / "db.password"
    password.write_text(ROLE_PASSWORD + "\n")
    password.chmod(0o600)
    storage = (f"backend = postgresql\ndsn = {server.tcp_dsn(dbname)}\n"
               f"password-file = {password}\npool-size = 4\n{extra}")
    return DaemonProcess(tmp_path, sections={"storage": storage,
                                             "event-source": "event-source-throttle = 0"})


def health(admin: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(admin + "/health", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:
        return 0, None


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_ctl_login_publish_and_resume_across_a_restart(tmp_path: Path,
                                                             pg_server: PgServer) -> None:
    """check-config and migrate reach the database; a user added with jmappushctl logs in;
    a publish reaches an EventSource; after a daemon restart its Last-Event-ID resumes with
    the change made while the daemon was down (ES-10)."""
    d = pg_daemon(tmp_path, pg_server, pg_server.new_database())
    assert d.ctl("check-config").stdout.endswith(": OK\n")
    latest = len(MIGRATIONS)
    assert d.ctl("migrate").stdout == f"schema migrated from version 0 to {latest}\n"
    assert d.ctl("migrate").stdout == f"schema up to date (version {latest})\n"
    d.ctl("user", "add", "alice", "--password-stdin", "--account-id", "acc1",
          stdin="s3cret\n")
    d.ctl("account", "grant", "alice", "shared1")
    assert d.ctl("user", "list").stdout == "alice\tacc1 shared1\n"
    token = d.ctl("token", "create", "alice").stdout.strip()
    await threads.deferToThread(d.start)
    try:
        client = await open_stream(es_url(d.base, types="Email"),
                                   {"Authorization": f"Bearer {token}"})
        await threads.deferToThread(d.ctl, "publish", "acc1", "Email=s42")
        changed, event_id = await client.next_state()
        assert changed == {"acc1": {"Email": "s42"}} and event_id
        status, body = health(d.admin)
        assert status == 200 and body["seq"] == 1
        assert "new applicationServerKey" in (await threads.deferToThread(
            d.ctl, "vapid", "rotate")).stdout
        await threads.deferToThread(d.stop)
        await client.wait_end()
        await threads.deferToThread(d.start)
        await threads.deferToThread(d.ctl, "publish", "acc1", "Email=s43")
        resumed = await open_stream(es_url(d.base),
                                    {**basic("alice", "s3cret"), "Last-Event-ID": event_id})
        assert (await resumed.next_state())[0] == {"acc1": {"Email": "s43"}}
        resumed.close()
    finally:
        if d.process is not None:
            await threads.deferToThread(d.stop)


@pytest.fixture
def stopped_server() -> Iterator[PgServer]:
    """A private server with the test role's database, stopped before the test begins."""
    server = start_private_server()
    server.stop()
    yield server
    server.destroy()


@pytest_twisted.ensureDeferred
async def test_daemon_started_while_the_database_is_down_becomes_ready(
        tmp_path: Path, stopped_server: PgServer) -> None:
    """With the server down the daemon does not exit: it logs each failed attempt, /health
    answers 503 "not ready", jmappushctl fails with one line; once the server is up the
    daemon becomes ready on its own and serves a user added then."""
    d = pg_daemon(tmp_path, stopped_server, "jmap")
    result = d.ctl("user", "list", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert f"127.0.0.1:{stopped_server.port}" in result.stderr
    assert "127.0.0.1" in d.ctl("check-config", check=False).stderr
    starting = threads.deferToThread(d.start, 60.0)
    try:
        wait_for(lambda: d.log().count("store unavailable") >= 2, "two failed attempts")
        status, body = health(d.admin)
        assert status == 503 and body["detail"].startswith("not ready")
        assert d.process is not None and d.process.poll() is None
        stopped_server.start()
        await starting
        status, body = health(d.admin)
        assert status == 200
        assert "store reachable again" in d.log()
        d.ctl("user", "add", "bob", "--password-stdin", stdin="pw\n")
        stream = await open_stream(es_url(d.base), basic("bob", "pw"))
        stream.close()
    finally:
        if not starting.called:
            stopped_server.start()
            await starting
        if d.process is not None:
            await threads.deferToThread(d.stop)


def test_stop_while_waiting_for_the_database(tmp_path: Path,
                                             stopped_server: PgServer) -> None:
    """SIGTERM while the daemon still waits for its database ends it promptly and cleanly."""
    d = pg_daemon(tmp_path, stopped_server, "jmap")
    starting: list[BaseException] = []
    import threading

    def start() -> None:
        try:
            d.start(60.0)
        except AssertionError as exc:
            starting.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    wait_for(lambda: "store unavailable" in d.log(), "a failed attempt")
    assert d.process is not None
    d.process.terminate()
    assert d.process.wait(timeout=30) in (0, -15)
    thread.join(30)
    assert "Traceback" not in d.log(), d.log()
