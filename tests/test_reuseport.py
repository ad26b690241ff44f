"""``reuseport:`` endpoints (issue 13, cluster mode: several nodes on one port).

The parser and its one-line errors, the config check and ``jmappushctl`` treating the
endpoint as they treat ``tcp:``/``ssl:``, and real loopback sockets: SO_REUSEPORT set before
bind, two ports sharing one number, a plain bind refused, the daemon's guarded port
(per-address limit) under it, and TLS over it. Ports run on a ``MemoryReactorClock`` as in
``test_guarded_port.py`` (the test calls ``doRead``), except the TLS handshake, which needs
the real reactor.
"""

from __future__ import annotations

import socket
import ssl
from io import StringIO
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.address import IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IProtocolNegotiationFactory,
    IStreamServerEndpointStringParser,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from jmappushd import ctl
from jmappushd.config import ConfigError, parse_config
from jmappushd.daemon.listeners import ListenError, ListenerService
from jmappushd.endpointargs import endpoint_arguments, endpoint_description, unwrap
from jmappushd.net import reuseport
from jmappushd.net.guardedport import GuardedListening, GuardedPort
from jmappushd.net.peerlimit import PeerLimit
from jmappushd.net.reserve import DescriptorGuard
from jmappushd.net.reuseport import ReusePortListening
from jmappushd.reactor import IDaemonReactor
from tests.support import config_text, free_port, live_reactor
from tests.test_guarded_port import Recording
from tests.test_websocket_helpers import self_signed

# -- the endpoint string --


@pytest.mark.parametrize("description", [
    "tcp:8080:interface=0.0.0.0",
    "tcp6:8080:interface=\\:\\:1",
    "ssl:443:privateKey=/etc/a\\:b.pem:certKey=c\\=d.pem",
    "tcp:8080:interface=\\\\odd",
])
def test_a_wrapped_endpoint_is_passed_on_as_written(description: str) -> None:
    """Splitting and joining again gives a string Twisted splits the same way: the wrapped
    endpoint is the one the operator wrote, escapes included."""
    args, kwargs = endpoint_arguments(description)
    joined = endpoint_description(args, kwargs)
    assert endpoint_arguments(joined) == (args, kwargs)
    assert unwrap(f"reuseport:{description}") == joined
    assert unwrap(description) == description


def test_the_plugin_is_found_by_prefix() -> None:
    """serverFromString finds the ``reuseport`` parser among Twisted's plugins."""
    prefixes = {p.prefix for p in getPlugins(IStreamServerEndpointStringParser)}
    assert "reuseport" in prefixes
    endpoint = serverFromString(MemoryReactor(), "reuseport:tcp:8080:interface=0.0.0.0")
    assert endpoint._reactor.__class__ is ReusePortListening


@pytest.mark.parametrize(("description", "reason"), [
    ("reuseport", "reuseport: wraps a tcp:, tcp6: or ssl: endpoint, not nothing "
                  "(e.g. reuseport:tcp:8080:interface=0.0.0.0)"),
    ("reuseport:unix:/run/x.sock", "reuseport: wraps a tcp:, tcp6: or ssl: endpoint, not "
                                   "unix: (e.g. reuseport:tcp:8080:interface=0.0.0.0)"),
    ("reuseport:8080", "reuseport: wraps a tcp:, tcp6: or ssl: endpoint, not 8080: "
                       "(e.g. reuseport:tcp:8080:interface=0.0.0.0)"),
    ("reuseport:tcp:80800", "port 80800 out of range 0-65535"),
    ("reuseport:tcp:-1", "port -1 out of range 0-65535"),
    ("reuseport:tcp:8080:interface=localhost", "interface 'localhost' is not an IP address"),
    ("reuseport:tcp6:8080:interface=1.2.3.4.5", "interface '1.2.3.4.5' is not an IP address"),
])
def test_bad_arguments_are_one_line(description: str, reason: str) -> None:
    """What the socket could not bind to is refused at parse time, without binding."""
    with pytest.raises(ValueError) as info:
        serverFromString(MemoryReactor(), description)
    assert str(info.value) == reason


def test_other_platforms_are_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside Linux SO_REUSEPORT does not spread connections (or is missing): refused."""
    monkeypatch.setattr(reuseport, "_PLATFORM", "darwin")
    with pytest.raises(ValueError) as info:
        serverFromString(MemoryReactor(), "reuseport:tcp:8080")
    assert str(info.value) == "reuseport: endpoints need Linux (SO_REUSEPORT); this is darwin"


# -- the config check and jmappushctl --


def write(tmp_path: Path, listen: str, extra_sections: str = "") -> Path:
    lines = config_text(tmp_path / "state", free_port(), free_port()).splitlines()
    lines = [f"listen = {listen}" if line.startswith("listen = tcp:") and i < 4 else line
             for i, line in enumerate(lines)]
    path = tmp_path / "jmappushd.ini"
    path.write_text("\n".join(lines) + "\n" + extra_sections)
    return path


def load(path: Path) -> Any:
    return parse_config(path.read_text(), str(path), environ={})


def test_the_config_accepts_it_without_binding(tmp_path: Path) -> None:
    """A port held by a plain socket passes the check, as it does for ``tcp:``: checking
    binds nothing (it would take the port from nobody, but it would hold it)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        endpoint = f"reuseport:tcp:{port}:interface=127.0.0.1"
        assert load(write(tmp_path, endpoint)).server.listen == (endpoint,)


@pytest.mark.parametrize(("listen", "reason"), [
    ("reuseport:tcp:80800", "bad endpoint 'reuseport:tcp:80800': port 80800 out of range "
                            "0-65535"),
    ("reuseport:udp:53", "bad endpoint 'reuseport:udp:53': reuseport: wraps a tcp:, tcp6: or "
                         "ssl: endpoint, not udp: (e.g. reuseport:tcp:8080:interface=0.0.0.0)"),
    ("reuseport:tcp:x", "bad endpoint 'reuseport:tcp:x': invalid literal for int() with base "
                        "10: 'x'"),
])
def test_config_errors_name_file_section_and_key(tmp_path: Path, listen: str,
                                                 reason: str) -> None:
    path = write(tmp_path, listen)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: [server] listen: {reason}"


def test_a_wrapped_tls_endpoint_gets_the_precise_key_check(tmp_path: Path) -> None:
    """``reuseport:ssl:`` names a missing key file the way ``ssl:`` does (tlsfiles.py),
    not with OpenSSL's error list."""
    _key, cert, _pem = self_signed(tmp_path)
    missing = tmp_path / "missing.pem"
    endpoint = f"reuseport:ssl:8443:privateKey={missing}:certKey={cert}"
    path = write(tmp_path, endpoint)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (f"{path}: [server] listen: {endpoint!r}: cannot read {missing}: "
                               "No such file or directory")


def test_nodes_sharing_a_port_need_their_own_names(tmp_path: Path) -> None:
    """With PostgreSQL (cluster) and a reuseport: listener, the default node name (host and
    first listen port) would be every node's: [cluster] node-name is then required."""
    storage = "\n[storage]\nbackend = postgresql\ndsn = postgresql://u@db.example/jmappushd\n"
    path = write(tmp_path, "reuseport:tcp:8080", storage)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: [cluster] node-name: required when [server] listen has a reuseport: "
        "endpoint (the default, host name and first listen port, would be the same on every "
        "node sharing it)")
    path.write_text(path.read_text() + "\n[cluster]\nnode-name = mail1-a\n")
    assert load(path).cluster.node_name == "mail1-a"
    assert load(write(tmp_path, "reuseport:tcp:8080")).cluster.node_name == ""  # SQLite


def test_check_config_and_admin_url(tmp_path: Path) -> None:
    """``jmappushctl check-config`` reports as for tcp: (OK, or the one line), and finds the
    admin listener's URL inside a reuseport: endpoint."""
    path = write(tmp_path, "reuseport:tcp:8080:interface=0.0.0.0")
    out, err = StringIO(), StringIO()
    ctl.check_config(str(path), out, err)
    assert out.getvalue() == f"{path}: OK\n"
    (tmp_path / "bad").mkdir()
    bad = write(tmp_path / "bad", "reuseport:tcp:8080:interface=example.org")
    with pytest.raises(ctl.CtlError) as info:
        ctl.check_config(str(bad), out, err)
    assert str(info.value) == (f"{bad}: [server] listen: bad endpoint "
                               "'reuseport:tcp:8080:interface=example.org': interface "
                               "'example.org' is not an IP address")
    text = path.read_text().replace("listen = tcp:", "listen = reuseport:tcp:")
    path.write_text(text)
    config = load(path)
    port = config.admin.listen[0].split(":")[2]
    assert ctl.admin_url(config) == f"http://127.0.0.1:{port}"


# -- real sockets --


def guarded(clock: MemoryReactorClock, limit: int = 0) -> ReusePortListening:
    """What the daemon's listener builds: the reuseport façade over the guarded one."""
    peers = PeerLimit(limit) if limit else None
    return ReusePortListening(GuardedListening(clock, DescriptorGuard(clock), peers))


def stop(clock: MemoryReactorClock, *ports: Any) -> None:
    for port in ports:
        port.stopListening()
    clock.advance(0)


def reuses(port: GuardedPort) -> bool:
    return bool(port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


def test_two_ports_share_one_number_and_a_plain_bind_is_refused() -> None:
    """Both ports are the daemon's guarded ports with SO_REUSEPORT; while they listen a
    socket without the option cannot bind the port (EADDRINUSE), and a ``tcp:`` listener
    on it fails in one line."""
    clock = MemoryReactorClock()
    first = guarded(clock).listenTCP(0, Recording(), 50, "127.0.0.1")
    assert isinstance(first, GuardedPort)
    number = first.getHost().port
    second = guarded(clock).listenTCP(number, Recording(), 50, "127.0.0.1")
    try:
        assert isinstance(second, GuardedPort)
        assert reuses(first) and reuses(second)
        assert second.getHost().port == number
        with socket.socket() as plain, pytest.raises(OSError) as info:
            plain.bind(("127.0.0.1", number))
        assert info.value.strerror == "Address already in use"
        description = f"tcp:{number}:interface=127.0.0.1"
        listener = ListenerService(cast(IDaemonReactor, clock), description, Recording())
        with pytest.raises(ListenError) as refused:
            listener.privilegedStartService()
        assert str(refused.value) == f"cannot listen on {description}: Address already in use"
    finally:
        stop(clock, first, second)


def test_a_port_held_without_the_option_is_one_line() -> None:
    """The other way round: a reuseport: listener on a port a plain socket holds."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        description = f"reuseport:tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        listener = ListenerService(cast(IDaemonReactor, MemoryReactorClock()), description,
                                   Recording())
        with pytest.raises(ListenError) as info:
            listener.privilegedStartService()
        assert str(info.value) == f"cannot listen on {description}: Address already in use"
        assert listener.port is None


def test_the_listener_service_applies_the_per_address_limit() -> None:
    """Through ListenerService, as the daemon wires it: a guarded port with SO_REUSEPORT
    whose accept loop closes a second connection from one address (limit 1)."""
    clock = MemoryReactorClock()
    factory = Recording()
    listener = ListenerService(cast(IDaemonReactor, clock),
                               "reuseport:tcp:0:interface=127.0.0.1", factory,
                               max_per_address=1)
    listener.privilegedStartService()
    port = listener.port
    assert isinstance(port, GuardedPort) and reuses(port)
    first, second = socket.socket(), socket.socket()
    try:
        first.connect(("127.0.0.1", port.getHost().port))
        second.connect(("127.0.0.1", port.getHost().port))
        port.doRead()
        port.doRead()
        assert len(factory.built) == 1
        second.settimeout(2)
        assert second.recv(1) == b""  # closed at accept
    finally:
        first.close()
        second.close()
        listener.stopService()
        clock.advance(0)


def test_ipv6_interfaces() -> None:
    """``tcp6:`` (and an IPv6 ``interface`` of ``tcp:``) bind an AF_INET6 socket."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback (::1) on this machine")
    clock = MemoryReactorClock()
    ports: list[Any] = []
    for description in ("reuseport:tcp6:0:interface=\\:\\:1", "reuseport:tcp:0:interface=\\:\\:1"):
        serverFromString(guarded(clock), description).listen(Recording()).addCallback(
            ports.append)
    try:
        assert len(ports) == 2
        for port in ports:
            assert isinstance(port, GuardedPort) and reuses(port)
            host = port.getHost()
            assert isinstance(host, IPv6Address) and host.host == "::1"
    finally:
        stop(clock, *ports)


class Hello(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello")
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class HelloFactory(Factory):
    """Offers ALPN as the daemon's JMAPSite does (HTTP/2 on TLS listeners)."""

    protocol = Hello

    def acceptableProtocols(self) -> list[bytes]:
        return [b"h2", b"http/1.1"]


def tls_read(port: int, cert_pem: bytes) -> tuple[str | None, bytes]:
    """The protocol ALPN picked and what the server wrote, over a verified TLS connection."""
    context = ssl.create_default_context(cadata=cert_pem.decode())
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        data = b""
        while chunk := tls.recv(64):
            data += chunk
        return tls.selected_alpn_protocol(), data


@pytest_twisted.ensureDeferred
async def test_tls_over_a_shared_port(tmp_path: Path) -> None:
    """``reuseport:ssl:`` on the real reactor: a TLS handshake against the certificate,
    ALPN offering h2 as on ``ssl:`` (so HTTP/2 works), the protocol's bytes through the TLS
    wrapper on a SO_REUSEPORT guarded port."""
    key, cert, pem = self_signed(tmp_path)
    listener = ListenerService(
        live_reactor(), f"reuseport:ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        HelloFactory())
    listener.privilegedStartService()
    try:
        port = listener.port
        assert isinstance(port, GuardedPort) and reuses(port)
        assert port.factory is not None
        assert isinstance(port.factory.buildProtocol(None), TLSMemoryBIOProtocol)
        number = port.getHost().port
        assert await threads.deferToThread(tls_read, number, pem) == ("h2", b"hello")
    finally:
        await listener.stopService()
