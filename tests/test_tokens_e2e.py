"""End to end: resumption tokens of the real daemon reveal nothing and only resume for
their own user and deployment (issue 11).

``twistd -n jmappushd`` runs in a subprocess; clients are real EventSource and
WebSocket clients. ES-9, ES-10, C-ES-3, C-ES-4 (EventSource ids), WS-19, C-WS-8
(pushState).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import threads

from tests.daemon_process import DaemonProcess
from tests.support import RequestHeaders, basic
from tests.test_eventsource_live import SSEClient, es_url, open_stream
from tests.test_websocket_helpers import basic_header, connect

TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


def daemon(tmp_path: Path) -> DaemonProcess:
    """alice reads acc1; bob reads acc2 and (granted) acc1."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    d = DaemonProcess(tmp_path, sections={"event-source": "event-source-throttle = 0",
                                          "websocket": "ws-throttle = 0"})
    for name, account in (("alice", "acc1"), ("bob", "acc2")):
        d.ctl("user", "add", name, "--password-stdin", "--account-id", account,
              stdin="s3cret\n")
    d.ctl("account", "grant", "bob", "acc1")
    return d


async def state_after(d: DaemonProcess, auth: RequestHeaders, *changes: list[str]) -> str:
    """Open a stream, publish ``changes`` (ctl argument lists), return the last event id."""
    client = await open_stream(es_url(d.base), auth)
    event_id: str | None = None
    for change in changes:
        await threads.deferToThread(d.ctl, "publish", *change)
        _, event_id = await client.next_state()
    client.close()
    assert event_id is not None
    return event_id


async def resume(d: DaemonProcess, auth: RequestHeaders, last_event_id: str
                 ) -> tuple[dict[str, Any], str | None]:
    client: SSEClient = await open_stream(es_url(d.base, closeafter="state"),
                                          {**auth, "Last-Event-ID": last_event_id})
    try:
        return await client.next_state()
    finally:
        client.close()


def epoch_of(d: DaemonProcess) -> str:
    with sqlite3.connect(d.tmp_path / "state" / "jmappushd.sqlite3") as db:
        (epoch,) = db.execute("SELECT epoch FROM store_info WHERE id = 1").fetchone()
    return str(epoch)


@pytest_twisted.ensureDeferred
async def test_event_ids_resume_only_for_their_user_and_deployment(tmp_path: Path) -> None:
    """alice's id resumes her delta; the same id presented by bob (who reads the same
    account), a forged id, a pre-upgrade ``<epoch>-<seq>`` id and alice's id at another
    deployment all get the full current state, as an unknown token (C-ES-3)."""
    d = daemon(tmp_path / "one")
    other = daemon(tmp_path / "two")
    await threads.deferToThread(d.start)
    await threads.deferToThread(other.start)
    alice, bob = basic("alice", "s3cret"), basic("bob", "s3cret")
    try:
        await threads.deferToThread(d.ctl, "publish", "acc2", "Email=b1")
        mark = await state_after(d, alice, ["acc1", "Email=s1", "Mailbox=m1"])
        assert TOKEN.fullmatch(mark)
        await threads.deferToThread(d.ctl, "publish", "acc1", "Email=s2")
        full_alice = {"acc1": {"Email": "s2", "Mailbox": "m1"}}
        full_bob = {**full_alice, "acc2": {"Email": "b1"}}

        changed, now = await resume(d, alice, mark)
        assert changed == {"acc1": {"Email": "s2"}} and now and TOKEN.fullmatch(now)
        assert (await resume(d, bob, mark))[0] == full_bob
        forged = mark[:10] + ("A" if mark[10] != "A" else "B") + mark[11:]
        assert (await resume(d, alice, forged))[0] == full_alice
        assert (await resume(d, alice, f"{epoch_of(d)}-2"))[0] == full_alice

        await threads.deferToThread(other.ctl, "publish", "acc1", "Email=o1")
        assert (await resume(other, alice, mark))[0] == {"acc1": {"Email": "o1"}}
    finally:
        for daemon_ in (d, other):
            if daemon_.process is not None:
                await threads.deferToThread(daemon_.stop)
    assert "Traceback" not in d.log() and "Traceback" not in other.log()


@pytest_twisted.ensureDeferred
async def test_resync_tokens_tell_nothing_about_other_accounts(tmp_path: Path) -> None:
    """The leak this fixes: alice asking for a resync again and again used to get the
    store-wide sequence, so she could count bob's changes. Now every resync token is new
    (whether or not anything changed elsewhere), each still resumes, and none resumes for
    bob; over WebSocket the same holds for pushState (C-WS-8)."""
    d = daemon(tmp_path)
    await threads.deferToThread(d.start)
    alice = basic("alice", "s3cret")
    try:
        await threads.deferToThread(d.ctl, "publish", "acc1", "Email=s1")
        quiet = [(await resume(d, alice, "unknown"))[1] for _ in range(2)]
        await threads.deferToThread(d.ctl, "publish", "acc2", "Email=b1")  # bob's only
        busy = (await resume(d, alice, "unknown"))[1]
        ids = [*quiet, busy]
        assert len(set(ids)) == 3 and all(i and TOKEN.fullmatch(i) for i in ids)
        await threads.deferToThread(d.ctl, "publish", "acc1", "Email=s2")
        for token in ids:
            assert token is not None
            assert (await resume(d, alice, token))[0] == {"acc1": {"Email": "s2"}}

        states = []
        for _ in range(2):
            client = await connect(d.base, basic_header("alice", "s3cret"))
            client.send({"@type": "WebSocketPushEnable", "pushState": "unknown"})
            states.append((await client.next())["pushState"])
            await client.bye()
        assert states[0] != states[1] and all(TOKEN.fullmatch(s) for s in states)
        client = await connect(d.base, basic_header("bob", "s3cret"))
        client.send({"@type": "WebSocketPushEnable", "pushState": states[0]})
        full = await client.next()
        await client.bye()
        assert full["changed"] == {"acc1": {"Email": "s2"}, "acc2": {"Email": "b1"}}
    finally:
        if d.process is not None:
            await threads.deferToThread(d.stop)
