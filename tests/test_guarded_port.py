"""Guarded listening ports (issue 11, defect 5): per-address limit at accept, and the
descriptor limit handled by shedding (or pausing) instead of spinning on EMFILE.

Ports listen on real loopback sockets but run on a ``MemoryReactorClock``: the test
calls ``doRead`` where the reactor would, and "reading" means being in its readers.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet import tcp
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from jmappushd.daemon.listeners import ListenerService
from jmappushd.net import guardedport
from jmappushd.net.guardedport import GuardedListening, GuardedPort
from jmappushd.net.peerlimit import PeerLimit
from jmappushd.net.reserve import DescriptorGuard, DescriptorReserve
from jmappushd.reactor import IDaemonReactor
from tests.support import log_into


class Recording(Factory):
    def __init__(self) -> None:
        self.built: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol | None:
        protocol = Protocol()
        protocol.factory = self
        self.built.append(protocol)
        return protocol


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    observer = log_into(seen)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def warnings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_level") in (LogLevel.warn, LogLevel.error,
                                                        LogLevel.critical)]


def listen(limit: int = 0, guard: DescriptorGuard | None = None,
           factory: Factory | None = None, clock: MemoryReactorClock | None = None
           ) -> tuple[GuardedPort, MemoryReactorClock]:
    clock = clock if clock is not None else MemoryReactorClock()
    guard = guard if guard is not None else DescriptorGuard(clock)
    listening = GuardedListening(clock, guard, PeerLimit(limit) if limit else None)
    port = listening.listenTCP(0, factory or Recording(), 50, "127.0.0.1")
    assert isinstance(port, GuardedPort)
    return port, clock


def connect(port: GuardedPort, source: str = "127.0.0.1") -> socket.socket:
    client = socket.socket()
    client.bind((source, 0))
    client.connect(("127.0.0.1", port.getHost().port))
    return client


def closed_by_server(client: socket.socket) -> bool:
    client.settimeout(2)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def stop(port: GuardedPort, clock: MemoryReactorClock) -> None:
    port.stopListening()
    clock.advance(0)


# -- per address --


def test_peer_limit_counts_and_releases() -> None:
    limit = PeerLimit(2)
    assert limit.admit("a") and limit.admit("a") and not limit.admit("a")
    assert limit.admit("b") and limit.refused == 1
    limit.release("a")
    assert limit.held("a") == 1 and limit.admit("a")
    for _ in range(3):
        limit.release("a")
    assert limit.held("a") == 0 and len(limit) == 1  # no entry kept for an idle address
    unlimited = PeerLimit(0)
    assert all(unlimited.admit("c") for _ in range(5000))


def test_connections_over_the_per_address_limit_are_closed_at_accept() -> None:
    """The third connection from one address is closed before any protocol exists;
    another address is not affected; a closed connection frees its slot."""
    port, clock = listen(limit=2)
    factory = port.factory
    assert isinstance(factory, Recording)
    clients = [connect(port) for _ in range(3)]
    other = connect(port, source="127.0.0.2")
    try:
        port.doRead()
        assert len(factory.built) == 3  # two from 127.0.0.1, one from 127.0.0.2
        assert closed_by_server(clients[2])
        peers = port.peers
        assert peers is not None
        assert peers.held("127.0.0.1") == 2 and peers.held("127.0.0.2") == 1
        served = factory.built[0].transport
        assert isinstance(served, tcp.Server)
        served.connectionLost(Failure(ConnectionDone()))
        assert peers.held("127.0.0.1") == 1
        again = connect(port)
        port.doRead()
        assert len(factory.built) == 4
        again.close()
    finally:
        for c in (*clients, other):
            c.close()
        stop(port, clock)


def test_a_declined_connection_gives_its_slot_back() -> None:
    """A factory answering None closes the socket and does not hold the address's slot."""

    class Declining(Factory):
        def buildProtocol(self, addr: Any) -> Protocol | None:
            return None

    port, clock = listen(limit=1, factory=Declining())
    client = connect(port)
    try:
        port.doRead()
        assert closed_by_server(client)
        assert port.peers is not None and port.peers.held("127.0.0.1") == 0
    finally:
        client.close()
        stop(port, clock)


def test_tls_listeners_refuse_at_accept_without_breaking_the_wrapper(tmp_path: Path) -> None:
    """``ssl:`` endpoints get a guarded port under the TLS wrapper: an over-limit
    connection is closed at accept (a ``None`` protocol would break the wrapper)."""
    from tests.test_websocket_helpers import self_signed

    key, cert, _pem = self_signed(tmp_path)
    clock = MemoryReactorClock()
    listening = GuardedListening(clock, DescriptorGuard(clock), PeerLimit(1))
    endpoint = serverFromString(
        listening, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    ports: list[Any] = []
    endpoint.listen(Recording()).addCallback(ports.append)
    port = ports[0]
    assert isinstance(port, GuardedPort)
    first, second = connect(port), connect(port)
    try:
        port.doRead()
        assert closed_by_server(second)
        assert port.factory is not None
        assert isinstance(port.factory.buildProtocol(None), TLSMemoryBIOProtocol)
    finally:
        first.close()
        second.close()
        stop(port, clock)


def test_socket_activated_listeners_are_guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``systemd:`` endpoint adopts the inherited socket as a guarded port, through
    ListenerService, and the per-address limit applies to it."""
    from twisted.internet.endpoints import _SystemdParser
    from twisted.python.systemd import ListenFDs

    inherited = socket.socket()
    inherited.bind(("127.0.0.1", 0))
    inherited.listen(5)
    inherited.setblocking(False)
    monkeypatch.setattr(_SystemdParser, "_sddaemon", ListenFDs([inherited.detach()]))
    clock = MemoryReactorClock()
    factory = Recording()
    listener = ListenerService(cast(IDaemonReactor, clock), "systemd:domain=INET:index=0",
                               factory, max_per_address=1)
    listener.startService()
    port = listener._port
    assert isinstance(port, GuardedPort)
    first, second = connect(port), connect(port)
    try:
        port.doRead()
        assert len(factory.built) == 1 and closed_by_server(second)
    finally:
        first.close()
        second.close()
        listener.stopService()
        clock.advance(0)


def test_adopted_stream_endpoint_goes_through_the_guard() -> None:
    clock = MemoryReactorClock()
    listening = GuardedListening(clock, DescriptorGuard(clock), None)
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen(5)
    ports: list[Any] = []
    AdoptedStreamServerEndpoint(listening, raw.detach(), socket.AF_INET).listen(
        Recording()).addCallback(ports.append)
    assert isinstance(ports[0], GuardedPort) and ports[0].peers is None
    stop(ports[0], clock)


# -- the descriptor limit, modelled: a process with a fixed number of free slots --


class Slots:
    """Free descriptor slots shared by the fake listener and the reserve."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.shed = 0

    def take(self) -> int:
        if self.free <= 0:
            raise OSError(errno.EMFILE, "Too many open files")
        self.free -= 1
        return 99

    def give(self, fd: int) -> None:
        self.free += 1


class CountedSocket(socket.socket):
    """An accepted socket whose close frees a modelled slot."""

    slots: Slots

    def close(self) -> None:
        if self.fileno() != -1:
            self.slots.free += 1
            self.slots.shed += 1
        super().close()


class LimitedListener:
    """The port's real listening socket, whose ``accept`` fails with EMFILE while a
    connection is queued and no slot is free, as the kernel's does."""

    def __init__(self, real: socket.socket, slots: Slots) -> None:
        self.real = real
        self.slots = slots

    def accept(self) -> tuple[socket.socket, Any]:
        if self.slots.free <= 0:
            readable, _, _ = select.select([self.real], [], [], 0)
            if readable:
                raise OSError(errno.EMFILE, "Too many open files")
            raise BlockingIOError(errno.EAGAIN, "no connection queued")
        conn, addr = self.real.accept()
        self.slots.free -= 1
        counted = CountedSocket(fileno=conn.detach())
        counted.slots = self.slots
        return counted, addr

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def limited(free: int) -> tuple[GuardedPort, MemoryReactorClock, Slots, DescriptorGuard]:
    """A port in a process with ``free`` slots; the guard's spare takes one at start."""
    slots = Slots(free)
    clock = MemoryReactorClock()
    guard = DescriptorGuard(clock, DescriptorReserve(slots.take, slots.give))
    guard.start()
    port, _ = listen(guard=guard, clock=clock)
    port.socket = LimitedListener(port.socket, slots)
    return port, clock, slots, guard


def reading(port: GuardedPort, clock: MemoryReactorClock) -> bool:
    return port in clock.getReaders()


def test_at_the_limit_queued_connections_are_shed_and_logged_once(
        events: list[dict[str, Any]]) -> None:
    """With every slot taken, each queued connection is accepted with the spare
    descriptor and closed at once (the client sees it end, nothing hangs); the port
    keeps reading; the exhaustion is logged once however many connections arrive, and
    its end is logged once with the count."""
    port, clock, slots, guard = limited(free=1)  # the spare takes the only free slot
    assert slots.free == 0 and guard.reserve.held
    clients = [connect(port) for _ in range(3)]
    try:
        port.doRead()
        assert all(closed_by_server(c) for c in clients)
        assert slots.shed == 3 and guard.reserve.held and reading(port, clock)
        more = [connect(port) for _ in range(5)]
        for _ in more:
            port.doRead()
        assert all(closed_by_server(c) for c in more)
        assert len(warnings(events)) == 1
        assert "cannot accept connections" in warnings(events)[0]["log_format"]
        assert warnings(events)[0]["error"] == "EMFILE"
        # A descriptor frees up: the next connection is served, and the end is logged.
        slots.free += 1
        ok = connect(port)
        port.doRead()
        factory = port.factory
        assert isinstance(factory, Recording) and len(factory.built) == 1
        ends = [e for e in events if e.get("count") is not None]
        assert [e["count"] for e in ends] == [8]
        ok.close()
        for c in clients + more:
            c.close()
    finally:
        stop(port, clock)


def test_without_a_spare_the_port_pauses_instead_of_spinning(
        events: list[dict[str, Any]]) -> None:
    """If the spare is lost (another thread took its slot) and no slot is free, the port
    stops reading for a pause and retries: no busy loop, one log line; once a slot frees,
    the spare is taken back and connections are shed or served again."""
    port, clock, slots, guard = limited(free=0)
    assert not guard.reserve.held
    client = connect(port)
    try:
        port.doRead()
        assert not reading(port, clock)  # the reactor will not call doRead again
        clock.advance(guard.pause)
        assert reading(port, clock)
        port.doRead()
        assert not reading(port, clock)
        assert len(warnings(events)) == 1
        slots.free += 1  # a descriptor is closed somewhere
        clock.advance(guard.pause)
        assert guard.reserve.held and reading(port, clock)
        port.doRead()
        assert closed_by_server(client) and reading(port, clock)
    finally:
        client.close()
        stop(port, clock)


def test_stopping_a_paused_port_cancels_its_pause() -> None:
    port, clock, _slots, _guard = limited(free=0)
    client = connect(port)
    port.doRead()
    assert clock.getDelayedCalls()
    stop(port, clock)
    assert not clock.getDelayedCalls()
    client.close()


def test_the_warning_is_rate_limited_across_exhaustions(events: list[dict[str, Any]]) -> None:
    """Exhaustions that come and go log at most one warning per quiet period."""
    clock = MemoryReactorClock()
    guard = DescriptorGuard(clock, quiet=60)
    for _ in range(5):
        guard.exhausted(errno.EMFILE)
        guard.accepted()
        clock.advance(10)
    assert len(warnings(events)) == 1
    clock.advance(60)
    guard.exhausted(errno.ENFILE)
    assert len(warnings(events)) == 2 and warnings(events)[1]["error"] == "ENFILE"


# -- the start-up check --


def test_the_check_passes_on_the_installed_twisted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guardedport, "_checked", False)
    assert guardedport.check() is True and guardedport.GUARDED


def test_a_broken_twisted_falls_back_to_plain_ports(monkeypatch: pytest.MonkeyPatch,
                                                    events: list[dict[str, Any]]) -> None:
    """When what the guarded port uses is gone, listeners use Twisted's own ports, and
    that is logged once."""

    def gone(*args: Any) -> Any:
        raise AttributeError("_fromListeningDescriptor")

    monkeypatch.setattr(guardedport, "_checked", False)
    monkeypatch.setattr(guardedport, "GUARDED", True)
    monkeypatch.setattr(tcp.Port, "_fromListeningDescriptor", classmethod(gone))
    assert guardedport.check() is False
    assert guardedport.check() is False
    assert len(warnings(events)) == 1
    clock = MemoryReactorClock()
    listening = GuardedListening(clock, DescriptorGuard(clock), PeerLimit(1))
    listening.listenTCP(0, Recording(), 50, "127.0.0.1")
    assert clock.tcpServers and not isinstance(clock.tcpServers[0], GuardedPort)


# -- wiring --


def test_the_daemon_wires_the_limits_into_both_listeners(tmp_path: Path) -> None:
    """header-timeout reaches both sites (on the daemon's timer wheel); the per-address
    limit is the public listener's only; all listeners share one spare descriptor."""
    from jmappushd.config import parse_config
    from jmappushd.daemon.service import build_service
    from jmappushd.store.memory import MemoryStore
    from jmappushd.web.site import JMAPSite
    from tests.support import live_reactor, make_config

    make_config(tmp_path)
    text = (tmp_path / "jmappushd.ini").read_text().replace(
        "[server]\n", "[server]\nheader-timeout = 2.5\nmax-connections-per-address = 7\n", 1)
    config = parse_config(text, str(tmp_path / "jmappushd.ini"), environ={})
    service = build_service(config, live_reactor(), store=MemoryStore())
    public, admin = [s for s in service if isinstance(s, ListenerService)]
    assert public.peers is not None and public.peers.limit == 7
    assert admin.peers is None
    assert public.guard is admin.guard
    for listener in (public, admin):
        site = listener._factory
        assert isinstance(site, JMAPSite)
        assert site.header_timeout == 2.5 and site.timers is service.app.wheel
