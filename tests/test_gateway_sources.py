"""Gateway change sources: the Cyrus notify socket (a real Unix datagram socket) and polling."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from jmappushd.gateway.sources import CyrusNotifySource, PollSource
from tests.support import live_reactor


def packet(user: str) -> bytes:
    return b"\0".join([b"external", b"EVENT", b"", user.encode(), b"", b"0", b"{}", b""])


@pytest_twisted.inlineCallbacks
def test_notify_socket_replaces_a_stale_one_and_delivers(tmp_path: Path) -> Any:
    path = tmp_path / "notify.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()  # what a killed daemon leaves behind
    seen: list[str] = []
    arrived: defer.Deferred[None] = defer.Deferred()

    def changed(account: str) -> None:
        seen.append(account)
        if len(seen) == 2:
            arrived.callback(None)

    source = CyrusNotifySource(live_reactor(), str(path), changed)
    source.startService()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666  # the Cyrus user may write
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.sendto(packet("alice"), str(path))
        sender.sendto(b"not a cyrus packet", str(path))
        sender.sendto(packet("bob"), str(path))
        sender.close()
        yield arrived
        assert seen == ["alice", "bob"]
        assert source.protocol.dropped == 1
    finally:
        source.stopService()
    assert not path.exists()


def test_notify_socket_refuses_to_replace_a_file(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    path.write_text("precious")
    source = CyrusNotifySource(live_reactor(), str(path), lambda a: None)
    with pytest.raises(OSError, match="exists and is not a socket"):
        source.startService()
    assert path.read_text() == "precious"


def test_poll_reads_every_watched_account_each_interval() -> None:
    clock = Clock()
    watched = {"alice"}
    seen: list[str] = []
    poll = PollSource(clock, 30, lambda: watched, seen.append)
    poll.startService()
    clock.advance(29)
    assert seen == []
    clock.advance(1)
    assert seen == ["alice"]
    watched.add("bob")
    clock.advance(30)
    assert sorted(seen[1:]) == ["alice", "bob"]
    poll.stopService()
    clock.advance(300)
    assert len(seen) == 3
    assert clock.getDelayedCalls() == []
