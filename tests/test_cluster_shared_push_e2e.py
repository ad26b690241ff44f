"""Shared push state of a cluster end to end (issue 13): two ``twistd -n jmappushd``
processes on one PostgreSQL database. A VAPID rotation made on A (``jmappushctl vapid
rotate`` against A) is advertised by B's session within seconds, and creations for one
user spread over A and B are limited to ``[push] create-rate`` in total."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import threads

from tests.daemon_process import DaemonProcess
from tests.pg_server import PgServer
from tests.test_cluster_e2e import eventually, start_all, stop_all
from tests.test_pg_e2e import pg_daemon
from tests.test_websocket_helpers import basic_header

CORE = "urn:ietf:params:jmap:core"
VAPID = "urn:ietf:params:jmap:webpush-vapid"
CREATE_RATE = 3


def two_nodes(tmp_path: Path, server: PgServer) -> list[DaemonProcess]:
    dbname = server.new_database()
    made = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        d = pg_daemon(folder, server, dbname)
        text = d.config_path.read_text()
        assert "[push]\nallow-private-urls = true\n" in text
        d.config_path.write_text(text.replace(
            "[push]\nallow-private-urls = true\n",
            f"[push]\nallow-private-urls = true\ncreate-rate = {CREATE_RATE}\n"))
        made.append(d)
    return made


def session(d: DaemonProcess) -> dict[str, Any]:
    request = urllib.request.Request(d.base + "/jmap/session",
                                     headers=basic_header("alice", "pw"))
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def create(d: DaemonProcess, count: int) -> dict[str, Any]:
    """One PushSubscription/set creating ``count`` subscriptions on node ``d``."""
    objects = {f"c{n}": {"deviceClientId": f"dev{n}", "url": "https://127.0.0.1:9/push"}
               for n in range(count)}
    body = json.dumps({"using": [CORE], "methodCalls": [
        ["PushSubscription/set", {"create": objects}, "0"]]}).encode()
    request = urllib.request.Request(d.base + "/jmap/api/", data=body, method="POST", headers={
        **basic_header("alice", "pw"), "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        [[name, out, _]] = json.loads(response.read())["methodResponses"]
    assert name == "PushSubscription/set", out
    return dict(out)


@pytest_twisted.ensureDeferred
async def test_rotation_and_creation_rate_are_shared(tmp_path: Path,
                                                     pg_server: PgServer) -> None:
    """Rotate on A: B's session advertises A's new applicationServerKey (and a new session
    state) within a few seconds. Creations on A then B within one minute: create-rate in
    total, the rest refused with rateLimit on whichever node they reach."""
    a, b = daemons = two_nodes(tmp_path, pg_server)
    a.ctl("user", "add", "alice", "--password-stdin", "--account-id", "acc1", stdin="pw\n")
    await start_all(daemons)
    try:
        first_a = await threads.deferToThread(session, a)
        first_b = await threads.deferToThread(session, b)
        key = first_a["capabilities"][VAPID]["applicationServerKey"]
        assert first_b["capabilities"][VAPID]["applicationServerKey"] == key

        rotated = await threads.deferToThread(a.ctl, "vapid", "rotate")
        new_key = rotated.stdout.split()[2].rstrip(";")
        assert new_key != key
        assert (await threads.deferToThread(session, a))["capabilities"][VAPID] == {
            "applicationServerKey": new_key}
        started = time.monotonic()

        def b_has_new_key() -> bool:
            return bool(session(b)["capabilities"][VAPID]["applicationServerKey"] == new_key)

        await eventually(b_has_new_key, "B to advertise the rotated key", timeout=10)
        assert time.monotonic() - started < 10
        assert (await threads.deferToThread(session, b))["state"] != first_b["state"]
        assert "followed a VAPID key rotation" in b.log()

        on_a = await threads.deferToThread(create, a, 2)
        on_b = await threads.deferToThread(create, b, 2)
        assert len(on_a["created"]) == 2 and on_a["notCreated"] is None
        assert len(on_b["created"]) == 1
        [refused] = on_b["notCreated"].values()
        assert refused["type"] == "rateLimit"
        again = await threads.deferToThread(create, a, 1)
        assert again["created"] is None and again["notCreated"]["c0"]["type"] == "rateLimit"
    finally:
        await stop_all(daemons)
