"""``[upstream] changes = cyrus-notify`` robustness: the socket at start, and bad datagrams.

* A daemon killed with SIGKILL leaves its bound socket file behind; the next start replaces
  it, and Cyrus's events reach the new daemon through it.
* Anything else at the path (a regular file: a typo in the config, another program's file)
  is never removed: start-up stops, promptly, with one line naming ``[upstream]
  notify-socket`` and no traceback.
* Datagrams that are not Cyrus events (empty, binary, truncated, bad or deeply nested
  JSON, odd URIs) are dropped without a traceback, packets naming users the upstream does
  not know cost one refresh of the reader's session in all, and the next real event still
  works.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.logger import formatEvent, globalLogPublisher

from jmappushd.gateway.service import GatewayService
from jmappushd.gateway.sources import CyrusNotifySource
from tests.cyrus_server import CyrusServer
from tests.daemon_process import BIN, DaemonProcess, _env
from tests.gateway_support import cyrus_with_users, gateway, gateway_sections, reader_secret
from tests.support import LiveDaemon, basic, config_text, free_port, log_into
from tests.test_eventsource_live import es_url, open_stream, wait_for


@pytest.fixture(scope="module")
def cyrus() -> Iterator[CyrusServer]:
    yield from cyrus_with_users()


def notify_source(d: LiveDaemon) -> CyrusNotifySource:
    [source] = d.service.transport(GatewayService).gateway.sources
    assert isinstance(source, CyrusNotifySource)
    return source


async def delivery_reaches_alice(cyrus: CyrusServer, base: str) -> None:
    """A message for alice reaches her stream on the daemon at ``base`` with Cyrus's state."""
    stream = await open_stream(es_url(base), basic("alice", "alice-pw"))
    try:
        await threads.deferToThread(cyrus.deliver, "alice", "through the socket")
        truth = await threads.deferToThread(cyrus.states, "alice", "alice")
        changed, _ = await stream.next_state(timeout=5)
        while changed["alice"].get("Email") != truth["Email"]:
            changed, _ = await stream.next_state(timeout=5)
    finally:
        stream.close()


def is_stale_socket(path: Path) -> bool:
    """A socket file nobody is bound to (sending to it is refused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"ping", str(path))
        except ConnectionRefusedError:
            return True
    return False


@pytest_twisted.ensureDeferred
async def test_a_stale_socket_from_a_killed_daemon_is_replaced(cyrus: CyrusServer,
                                                               tmp_path: Path) -> None:
    """SIGKILL leaves the socket file; the next start binds afresh and Cyrus's events
    arrive through it."""
    d = DaemonProcess(tmp_path, sections=gateway_sections(cyrus, tmp_path))
    await threads.deferToThread(d.start)
    try:
        await threads.deferToThread(d.kill)
        assert cyrus.notify_socket.is_socket()
        assert is_stale_socket(cyrus.notify_socket)
        await threads.deferToThread(d.start)
        assert not is_stale_socket(cyrus.notify_socket)
        await delivery_reaches_alice(cyrus, d.base)
    finally:
        if d.process is not None:
            await threads.deferToThread(d.stop)


def test_a_file_at_the_socket_path_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """No Cyrus needed: the daemon refuses before binding anything, exits non-zero at once
    with one line naming the key, and leaves the file alone."""
    path = tmp_path / "notify.sock"
    path.write_text("not a socket\n")
    upstream = (f"session-url = http://127.0.0.1:{free_port()}/jmap/\n"
                f"changes = cyrus-notify\nnotify-socket = {path}\nreader-user = reader\n"
                f"reader-password-file = {reader_secret(tmp_path)}\n")
    config = tmp_path / "jmappushd.ini"
    config.write_text(config_text(tmp_path / "state", free_port(), free_port())
                      + f"\n[upstream]\n{upstream}")
    result = subprocess.run(
        [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", "jmappushd",
         "--config", str(config)],
        capture_output=True, text=True, timeout=20, env=_env(), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    named = [line for line in output.splitlines() if "[upstream] notify-socket" in line]
    assert len(named) == 1, output
    assert str(path) in named[0] and "not a socket" in named[0]
    assert "Traceback" not in output, output
    assert path.read_text() == "not a socket\n"


def cyrus_packet(user: bytes, event: bytes) -> bytes:
    """A packet shaped as Cyrus sends them (tests/cyrus_server.py names the fields)."""
    return b"\0".join([b"external", b"EVENT", b"", user, b"", b"0", event, b""])


GARBAGE = [
    b"",
    b"\0" * 64,
    b"\xff\xfe\xfd" * 100,
    bytes(range(256)) * 8,
    b"external\0EVENT\0",
    cyrus_packet(b"", b"{not json"),
    cyrus_packet(b"", b"[" * 50_000),  # within the 64 KiB the daemon reads
    cyrus_packet(b"", b'{"uri": "imap://[broken/user/alice;UIDVALIDITY=1"}'),
    cyrus_packet(b"", b'{"uri": ["imap://localhost/user/alice"]}'),
    cyrus_packet(b"", b'"just a string"'),
    cyrus_packet(b"", b'{"uri": "imap://localhost/shared/news"}'),
    cyrus_packet(b"", json.dumps({"uri": "imap://localhost/user/"}).encode()),
    cyrus_packet(b"", b"\xff" * 1000),
    b"x" * 60_000,
]


def send_all(path: Path, datagrams: list[bytes]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        for datagram in datagrams:
            s.sendto(datagram, str(path))


@pytest_twisted.ensureDeferred
async def test_garbage_datagrams_are_dropped_without_a_traceback(cyrus: CyrusServer,
                                                                 tmp_path: Path) -> None:
    """Every bad packet is counted and dropped (one log line in all), nothing is logged as a
    failure, and a delivery afterwards still reaches alice."""
    events: list[Any] = []
    observer = log_into(events)
    globalLogPublisher.addObserver(observer)
    try:
        async with gateway(cyrus, tmp_path) as d:
            protocol = notify_source(d).protocol
            # From a thread: a full socket queue (max_dgram_qlen, 10 by default) blocks
            # the sender until the reactor reads.
            await threads.deferToThread(send_all, cyrus.notify_socket, GARBAGE)
            await wait_for(lambda: protocol.received >= len(GARBAGE), "every datagram")
            assert protocol.dropped == len(GARBAGE)
            # Well-formed packets naming users the reader does not see: one refresh of
            # the reader's session for all of them, and nothing kept about them.
            states = d.service.transport(GatewayService).gateway.states
            assert states is not None
            strangers = [cyrus_packet(f"nobody-{i}".encode(), b"{}") for i in range(200)]
            await threads.deferToThread(send_all, cyrus.notify_socket, strangers)
            await wait_for(lambda: states.reads >= len(strangers) and states.tracked == 0,
                           "the strangers' reads")
            assert states.refreshes == 1
            await delivery_reaches_alice(cyrus, d.base)
        failures = [formatEvent(e) for e in events
                    if e.get("log_failure") is not None or e.get("isError")]
        assert failures == []
        dropped = [line for line in map(formatEvent, events) if "notify packet" in line]
        assert len(dropped) == 1, dropped
    finally:
        globalLogPublisher.removeObserver(observer)
