"""Cluster mode end to end: three ``twistd -n jmappushd`` processes on one PostgreSQL
database (tests/pg_server.py), real EventSource and WebSocket clients, ``jmappushctl``
against the same database. The nodes behave as one for listeners: fan-out, resumption
tokens, logins and revocation cross nodes; racing publishers leave no resume gap; a
database restart under traffic loses no acknowledged publish (issue 13; ES-10, WS-19)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.daemon_process import DaemonProcess
from tests.pg_server import PgServer, start_private_server
from tests.support import basic
from tests.test_eventsource_live import SSEClient, es_url, open_stream
from tests.test_pg_e2e import health, pg_daemon
from tests.test_websocket_helpers import basic_header, connect, echo


def nodes(tmp_path: Path, server: PgServer, dbname: str, count: int = 3) -> list[DaemonProcess]:
    made = []
    for n in range(count):
        folder = tmp_path / f"node{n}"
        folder.mkdir()
        d = pg_daemon(folder, server, dbname)
        d.config_path.write_text(d.config_path.read_text() + "\n[websocket]\nws-throttle = 0\n")
        made.append(d)
    return made


async def start_all(daemons: list[DaemonProcess]) -> None:
    await defer.gatherResults([threads.deferToThread(d.start) for d in daemons])


async def stop_all(daemons: list[DaemonProcess]) -> None:
    await defer.gatherResults([threads.deferToThread(d.stop) for d in daemons
                               if d.process is not None])


def admin_publish(d: DaemonProcess, changed: dict[str, dict[str, str]]) -> int | None:
    """POST /publish to one node's admin listener: its seq, or None when not acknowledged."""
    token = (d.tmp_path / "state" / "admin.token").read_text().strip()
    body = json.dumps({"@type": "StateChange", "changed": changed}).encode()
    request = urllib.request.Request(d.admin + "/publish", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 202:
                return None
            return int(json.loads(response.read())["seq"])
    except (urllib.error.URLError, OSError):
        return None


def session_status(d: DaemonProcess, user: str, password: str) -> int:
    request = urllib.request.Request(d.base + "/jmap/session",
                                     headers=dict(basic_header(user, password)))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def states_until(client: SSEClient, want: dict[str, str], timeout: float = 30.0
                       ) -> dict[str, str]:
    """Merge acc1's states from ``client``'s events until they include ``want``."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while not want.items() <= seen.items():
        left = deadline - time.monotonic()
        assert left > 0, f"timed out: saw {seen}, want {want}"
        changed, _ = await client.next_state(left)
        seen.update(changed.get("acc1", {}))
    return seen


async def eventually(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await threads.deferToThread(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await threads.deferToThread(time.sleep, 0.05)


@pytest_twisted.ensureDeferred
async def test_three_nodes_behave_as_one(tmp_path: Path, pg_server: PgServer) -> None:
    """A user added with jmappushctl logs in on every node; a publish on A reaches an
    EventSource on B and a WebSocket on C; an EventSource id from A resumes on C with only
    what changed while the client was away (a delta, not a resync); a token revoked with
    jmappushctl (node A's config) ends its stream on B within seconds."""
    a, b, c = daemons = nodes(tmp_path, pg_server, pg_server.new_database())
    a.ctl("user", "add", "alice", "--password-stdin", "--account-id", "acc1", stdin="pw\n")
    token = a.ctl("token", "create", "alice").stdout.strip()
    token_id = a.ctl("token", "list", "alice").stdout.split("\t")[0]
    await start_all(daemons)
    try:
        assert [await threads.deferToThread(session_status, d, "alice", "pw")
                for d in daemons] == [200, 200, 200]
        assert await threads.deferToThread(session_status, b, "alice", "wrong") == 401
        on_b = await open_stream(es_url(b.base), {"Authorization": f"Bearer {token}"})
        ws_c = await connect(c.base, basic_header("alice", "pw"))
        ws_c.send({"@type": "WebSocketPushEnable", "dataTypes": None})
        ws_c.send(echo(rid="sync"))
        assert (await ws_c.next())["requestId"] == "sync"
        on_a = await open_stream(es_url(a.base), basic("alice", "pw"))

        seq = await threads.deferToThread(admin_publish, a,
                                          {"acc1": {"Email": "s1", "Mailbox": "m1"}})
        assert seq == 1
        assert (await on_b.next_state())[0] == {"acc1": {"Email": "s1", "Mailbox": "m1"}}
        pushed = await ws_c.next()
        assert pushed["changed"] == {"acc1": {"Email": "s1", "Mailbox": "m1"}}
        changed, event_id = await on_a.next_state()
        assert changed == {"acc1": {"Email": "s1", "Mailbox": "m1"}} and event_id
        on_a.close()

        # Away: a change published on B; C hears of it (its WebSocket shows it).
        assert await threads.deferToThread(admin_publish, b, {"acc1": {"Email": "s2"}}) == 2
        assert (await ws_c.next())["changed"] == {"acc1": {"Email": "s2"}}
        resumed = await open_stream(es_url(c.base),
                                    {**basic("alice", "pw"), "Last-Event-ID": event_id})
        assert (await resumed.next_state())[0] == {"acc1": {"Email": "s2"}}
        resumed.close()
        for d in daemons:
            status, body = health(d.admin)
            assert status == 200 and body["seq"] == 2

        revoked = await threads.deferToThread(a.ctl, "token", "revoke", token_id)
        assert revoked.stdout == f"revoked token {token_id}\n"
        started = time.monotonic()
        await on_b.wait_end(15.0)
        assert time.monotonic() - started < 15.0
        await ws_c.bye()
    finally:
        await stop_all(daemons)


@pytest_twisted.ensureDeferred
async def test_racing_publishers_on_two_nodes_leave_no_resume_gap(
        tmp_path: Path, pg_server: PgServer) -> None:
    """Two publishers hammer nodes A and B at once; a listener on C sees every publish of
    each (each its own type, so merging cannot hide one) in publish order, the log's seqs
    are contiguous, every node's watermark reaches the end, and a token taken mid-race
    resumes on another node with every state changed after it."""
    a, b, c = daemons = nodes(tmp_path, pg_server, pg_server.new_database())
    a.ctl("user", "add", "alice", "--password-stdin", "--account-id", "acc1", stdin="pw\n")
    await start_all(daemons)
    try:
        on_c = await open_stream(es_url(c.base), basic("alice", "pw"))
        per = 40
        acks: dict[str, list[int | None]] = {"A": [], "B": []}

        def publisher(name: str, node: DaemonProcess) -> None:
            for n in range(per):
                acks[name].append(admin_publish(node, {"acc1": {f"{name}{n}": f"{name}-s{n}"}}))

        workers = [threading.Thread(target=publisher, args=(name, node))
                   for name, node in (("A", a), ("B", b))]
        for worker in workers:
            worker.start()
        seen: dict[str, str] = {}
        mid_token: str | None = None
        order: list[str] = []
        while len(seen) < 2 * per:
            changed, event_id = await on_c.next_state(30.0)
            for type_name in changed.get("acc1", {}):
                order.append(type_name)
            seen.update(changed.get("acc1", {}))
            if mid_token is None and len(seen) >= per:
                mid_token, mid_seen = event_id, dict(seen)
        for worker in workers:
            await threads.deferToThread(worker.join, 30)
        assert all(s is not None for s in acks["A"] + acks["B"])
        assert seen == {f"{p}{n}": f"{p}-s{n}" for p in "AB" for n in range(per)}
        for p in "AB":
            mine = [int(t[1:]) for t in order if t.startswith(p)]
            assert mine == sorted(mine)
        seqs = sorted(s for s in acks["A"] + acks["B"] if s is not None)
        assert seqs == list(range(1, 2 * per + 1))
        for d in daemons:
            await eventually(lambda d=d: health(d.admin)[1]["seq"] == 2 * per,
                             f"{d.base} at seq {2 * per}")
        assert mid_token is not None
        resumed = await open_stream(es_url(b.base, closeafter="state"),
                                    {**basic("alice", "pw"), "Last-Event-ID": mid_token})
        got, _ = await resumed.next_state()
        missing = {k: v for k, v in seen.items() if k not in mid_seen}
        assert missing.items() <= got["acc1"].items()
        on_c.close()
    finally:
        await stop_all(daemons)


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A private server of this test's own: it is restarted under traffic."""
    server = start_private_server()
    yield server
    server.destroy()


@pytest_twisted.ensureDeferred
async def test_database_restart_under_traffic_loses_no_acknowledged_publish(
        tmp_path: Path, own_server: PgServer) -> None:
    """Publishes flow into node A while PostgreSQL is stopped and started again: every
    node logs the lost LISTEN connection and reconnects, and the listeners on B and C end
    up with every publish that was acknowledged (202), before, during or after."""
    a, b, c = daemons = nodes(tmp_path, own_server, "jmap")
    a.ctl("user", "add", "alice", "--password-stdin", "--account-id", "acc1", stdin="pw\n")
    await start_all(daemons)
    stop = threading.Event()
    acked: dict[str, str] = {}
    try:
        listeners = [await open_stream(es_url(d.base), basic("alice", "pw")) for d in (b, c)]

        def traffic() -> None:
            n = 0
            while not stop.is_set():
                name = f"T{n}"
                if admin_publish(a, {"acc1": {name: f"s{n}"}}) is not None:
                    acked[name] = f"s{n}"
                n += 1
                time.sleep(0.01)

        worker = threading.Thread(target=traffic)
        worker.start()
        await eventually(lambda: len(acked) >= 20, "traffic before the restart")
        await threads.deferToThread(own_server.stop)
        before = len(acked)
        await eventually(lambda: all("not listening for changes" in d.log() for d in daemons),
                         "every node noticing the outage")
        await threads.deferToThread(own_server.start)
        await eventually(lambda: all("listening for changes on" in d.log().split(
            "not listening for changes", 1)[1] for d in daemons), "every node reconnected")
        await eventually(lambda: len(acked) >= before + 20, "traffic after the restart")
        stop.set()
        await threads.deferToThread(worker.join, 30)
        for client in listeners:
            seen = await states_until(client, dict(acked))
            assert dict(acked).items() <= seen.items()
            client.close()
    finally:
        stop.set()
        await stop_all(daemons)
