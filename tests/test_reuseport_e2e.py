"""Two real daemons on one port (issue 13, cluster mode: several nodes on one port).

Two ``twistd -n jmappushd`` processes on one PostgreSQL database (tests/pg_server.py) listen
on the same public port through ``reuseport:tcp:``; each has its own admin port, state
directory and ``[cluster] node-name``. New connections are spread by the kernel, so each
node's ``/metrics`` counts some of them; with one node stopped the other serves them all,
and a third daemon with a plain ``tcp:`` listener on that port refuses to start in one line.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

from tests.daemon_process import DaemonProcess
from tests.pg_server import PgServer
from tests.support import free_port
from tests.test_pg_e2e import pg_daemon
from tests.test_startup_errors import standard, twistd

CONNECTIONS = 64
"""New connections per round: all on one node by chance has probability 2 ** -63."""


def sharing(tmp_path: Path, server: PgServer, dbname: str, port: int, name: str
            ) -> DaemonProcess:
    """A PostgreSQL node whose public listener is ``reuseport:tcp:<port>`` on loopback."""
    folder = tmp_path / name
    folder.mkdir()
    d = pg_daemon(folder, server, dbname)
    text = d.config_path.read_text()
    text = text.replace(f"listen = tcp:{d.port}:", f"listen = reuseport:tcp:{port}:")
    text = text.replace(f"127.0.0.1:{d.port}", f"127.0.0.1:{port}")
    d.config_path.write_text(f"{text}\n[cluster]\nnode-name = {name}\n")
    d.port = port
    return d


def session_requests(admin: str) -> int:
    """How many ``/jmap/session`` requests the node answered (its own /metrics at admin)."""
    with urllib.request.urlopen(admin + "/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = r'^jmappushd_http_requests_total\{endpoint="session",status="\d+"\} (\S+)$'
    return sum(int(float(n)) for n in re.findall(pattern, text, re.MULTILINE))


def connect_many(base: str, count: int) -> None:
    """``count`` requests, each on a new connection (urllib does not keep connections)."""
    for _ in range(count):
        try:
            urllib.request.urlopen(base + "/jmap/session", timeout=10).close()
        except urllib.error.HTTPError as exc:
            assert exc.code == 401  # no credentials: answered, and counted, by the node
            exc.close()


def test_two_nodes_share_one_port(tmp_path: Path, pg_server: PgServer) -> None:
    """Both nodes accept connections on the shared port; a stopped node's share goes to
    the other; a non-reuseport bind of the port fails with one line (EADDRINUSE)."""
    port = free_port()
    dbname = pg_server.new_database()
    a = sharing(tmp_path, pg_server, dbname, port, "node-a")
    b = sharing(tmp_path, pg_server, dbname, port, "node-b")
    assert a.ctl("check-config").stdout.endswith(": OK\n")
    a.start()
    try:
        b.start()
        try:
            connect_many(a.base, CONNECTIONS)
            served = session_requests(a.admin), session_requests(b.admin)
            assert sum(served) == CONNECTIONS
            assert min(served) > 0, f"one node served every connection: {served}"

            (tmp_path / "plain").mkdir()
            endpoint = f"tcp:{port}:interface=127.0.0.1"
            status, lines = twistd(standard(tmp_path / "plain", listen=endpoint))
            assert status != 0
            assert lines == [f"jmappushd: error: cannot listen on {endpoint}: "
                             "Address already in use"]
        finally:
            assert b.stop() in (0, -15)  # twistd re-raises SIGTERM after a clean stop
        before = session_requests(a.admin)
        connect_many(a.base, CONNECTIONS // 4)
        assert session_requests(a.admin) == before + CONNECTIONS // 4
    finally:
        assert a.stop() in (0, -15)
