"""End to end: ``twistd -n jmappushd`` as a subprocess, ``jmappushctl publish``, and a
real WebSocket client receiving the StateChange (RFC 8887; WS-18, WS-19)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest_twisted
from twisted.internet import threads

from tests.daemon_process import DaemonProcess
from tests.test_websocket_helpers import basic_header, connect, echo


@pytest_twisted.ensureDeferred
async def test_ctl_publish_reaches_a_websocket(tmp_path: Path) -> None:
    """A user created with jmappushctl opens a WebSocket to the twistd daemon, enables
    push, and `jmappushctl publish` arrives as a StateChange with a pushState; the
    daemon stops cleanly with the socket open (closing it with 1001)."""
    d = DaemonProcess(tmp_path, sections={"websocket": "ws-throttle = 0"})
    d.ctl("user", "add", "alice", "--password-stdin", "--account-id", "acc1", stdin="pw\n")
    d.start()
    stopped = False
    try:
        client = await connect(d.base, basic_header("alice", "pw"))
        client.send({"@type": "WebSocketPushEnable", "dataTypes": ["Email"]})
        client.send(echo(rid="sync"))
        assert (await client.next())["requestId"] == "sync"
        out = await threads.deferToThread(d.ctl, "publish", "acc1", "Email=s42", "Mailbox=m1")
        assert out.stdout.strip() == "published as seq 1"
        change = await client.next()
        assert change == {"@type": "StateChange", "changed": {"acc1": {"Email": "s42"}},
                          "pushState": change["pushState"]}
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", change["pushState"])  # opaque (issue 11)
        code = await threads.deferToThread(d.stop)
        stopped = True
        assert code in (0, -15)
        assert (await client.wait_closed())[0] == 1001
    finally:
        if not stopped:
            d.stop()
