"""End to end: ``twistd -n jmappushd`` in a subprocess, ``jmappushctl publish``, and a
streaming client on the EventSource URL."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import threads

from tests.daemon_process import DaemonProcess
from tests.support import basic
from tests.test_eventsource_live import es_url, open_stream


@pytest_twisted.ensureDeferred
async def test_twistd_publish_reaches_an_event_stream(tmp_path: Path) -> None:
    """ES-1, ES-8, ES-10: a change published with jmappushctl reaches an open stream of
    the twistd daemon within the throttle; its id resumes after a daemon restart; stopping
    the daemon ends the stream cleanly."""
    d = DaemonProcess(tmp_path, sections={"event-source": "event-source-throttle = 0"})
    d.ctl("user", "add", "alice", "--password-stdin", "--account-id", "acc1",
          stdin="s3cret\n")
    await threads.deferToThread(d.start)
    try:
        auth = basic("alice", "s3cret")
        client = await open_stream(es_url(d.base, types="Email"), auth)
        await threads.deferToThread(d.ctl, "publish", "acc1", "Email=s42", "Mailbox=m7")
        changed, event_id = await client.next_state()
        assert changed == {"acc1": {"Email": "s42"}}
        assert event_id
        await threads.deferToThread(d.stop)
        await client.wait_end()
        await threads.deferToThread(d.start)
        await threads.deferToThread(d.ctl, "publish", "acc1", "Email=s43")  # missed
        resumed = await open_stream(es_url(d.base), {**auth, "Last-Event-ID": event_id})
        assert (await resumed.next_state())[0] == {"acc1": {"Email": "s43"}}
        resumed.close()
    finally:
        if d.process is not None:
            await threads.deferToThread(d.stop)
