"""TCP listening ports that refuse connections at accept: per address, and at the fd limit.

:class:`GuardedPort` is Twisted's ``tcp.Port`` with its own accept loop
(``doRead``): a connection from an address already holding its
:class:`~jmappushd.net.peerlimit.PeerLimit` is closed before any protocol is built
(one that is closed right away costs nothing else; a ``None`` from the factory would
break a TLS wrapper), and at the descriptor limit the
:class:`~jmappushd.net.reserve.DescriptorGuard` sheds queued connections or pauses
the port instead of letting the reactor spin. :class:`GuardedListening` stands in for
the reactor while an endpoint string is parsed and listened on, so ``tcp:``,
``tcp6:``, ``ssl:`` and socket-activated ``systemd:`` endpoints all get such a port;
any other endpoint type gets the reactor's own.

Like :mod:`jmappushd.net._fastpath`, this reads Twisted internals (the loop it
replaces, the systemd adoption constructor ``Port._fromListeningDescriptor``);
:func:`check` runs the guarded port once against a real loopback socket at start-up,
and if it no longer works the daemon listens with plain Twisted ports (no per-address
limit, Twisted's own ``EMFILE`` handling) and logs that once.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import address, tcp
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from jmappushd.net.peerlimit import PeerLimit
from jmappushd.net.reserve import EXHAUSTION_ERRORS, DescriptorGuard

_log = Logger()

GUARDED = True
"""Listeners use :class:`GuardedPort`; cleared by :func:`check` when it no longer works."""

_checked = False

_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
# Netfilter refused it, or the client gave up while queued: try the next one.
_SKIP = frozenset({errno.EPERM, errno.ECONNABORTED, errno.EPROTO})

MAX_ACCEPTS = 100
"""Connections accepted per readiness report at most (Twisted's starting batch)."""


class _CountedServer(tcp.Server):
    """A server connection that gives its peer-address slot back when it closes."""

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            port = self.server
            if isinstance(port, GuardedPort) and port.peers is not None:
                port.peers.release(str(self.hostname))


class GuardedPort(tcp.Port):
    """A ``tcp.Port`` whose accept loop applies a per-address limit and sheds at EMFILE."""

    transport = _CountedServer
    peers: PeerLimit | None = None
    guard: DescriptorGuard  # set before listening (GuardedListening, the probe)
    _accepts = MAX_ACCEPTS
    _paused: IDelayedCall | None = None

    def doRead(self) -> None:
        """Accept what is queued (up to an adaptive batch, as Twisted does)."""
        accepted = 0
        for _ in range(self._accepts):
            try:
                skt, addr = self.socket.accept()
            except OSError as e:
                if e.errno in _AGAIN:
                    break
                if e.errno in _SKIP:
                    continue
                if e.errno in EXHAUSTION_ERRORS:
                    self._at_limit(e.errno)
                    break
                _log.failure("accept() failed on {port}", port=self)
                break
            accepted += 1
            self.guard.accepted()
            self._serve(skt, addr)
        # A full batch hints at more waiting; otherwise ask for no more than came.
        self._accepts = (min(self._accepts + 20, MAX_ACCEPTS * 10) if accepted == self._accepts
                         else max(1, accepted))

    def _serve(self, skt: socket.socket, addr: tuple[Any, ...]) -> None:
        """Hand one accepted socket to a new protocol, unless its address is over the limit."""
        if len(addr) == 4:  # IPv6: keep the scope id readable, as Twisted does
            host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
            addr = (host[0], *addr[1:])
        peers = self.peers
        if peers is not None and not peers.admit(addr[0]):
            skt.close()
            return
        try:
            kind = address.IPv6Address if len(addr) == 4 else address.IPv4Address
            factory = self.factory
            protocol = None if factory is None else factory.buildProtocol(kind("TCP", *addr))
            if protocol is None:
                raise _Declined
            session, self.sessionno = self.sessionno, self.sessionno + 1
            transport = self.transport(skt, protocol, addr, self, session, self.reactor)
        except Exception as exc:
            skt.close()
            if peers is not None:
                peers.release(addr[0])
            if not isinstance(exc, _Declined):
                _log.failure("building a protocol for {addr} failed", addr=addr)
            return
        protocol.makeConnection(transport)

    def _at_limit(self, error: int) -> None:
        guard = self.guard
        guard.exhausted(error)
        if error != errno.EMFILE or not guard.shed(self.socket, MAX_ACCEPTS):
            self._pause(guard.pause)

    def _pause(self, seconds: float) -> None:
        """Stop reading for a while: the queued connections wait, the reactor rests."""
        if self._paused is None:
            self.stopReading()
            self._paused = self.guard.clock.callLater(seconds, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self.connected:
            self.guard.reserve.hold()
            self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        paused, self._paused = self._paused, None
        if paused is not None and paused.active():
            paused.cancel()
        super().connectionLost(reason)


class _Declined(Exception):
    """The factory built no protocol for this connection."""


class GuardedListening:
    """The reactor, as endpoints see it while they listen: their TCP ports are guarded.

    ``tcp:``/``tcp6:`` call ``listenTCP``, ``ssl:`` calls ``listenSSL`` (TLS is a
    protocol wrapper over a TCP port, as in Twisted's own reactors) and ``systemd:``
    calls ``adoptStreamPort``; everything else is the reactor's. The first port runs
    :func:`check` and takes the guard's spare descriptor.
    """

    def __init__(self, reactor: Any, guard: DescriptorGuard,
                 peers: PeerLimit | None) -> None:
        # Any: a façade for serverFromString, which wants the whole reactor (its stubs
        # name no interface union); it is the daemon's reactor or a test's MemoryReactor.
        self._reactor = reactor
        self._guard = guard
        self._peers = peers

    def __getattr__(self, name: str) -> object:
        return getattr(self._reactor, name)

    def _prepare(self, port: GuardedPort) -> GuardedPort:
        self._guard.start()
        port.guard = self._guard
        port.peers = self._peers
        port.startListening()
        return port

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50,
                  interface: str = "") -> IListeningPort:
        if not check():
            plain: IListeningPort = self._reactor.listenTCP(port, factory, backlog, interface)
            return plain
        return self._prepare(GuardedPort(port, factory, backlog, interface, self._reactor))

    def listenSSL(self, port: int, factory: IProtocolFactory, contextFactory: Any,
                  backlog: int = 50, interface: str = "") -> IListeningPort:
        wrapped = TLSMemoryBIOFactory(contextFactory, False, factory)
        return self.listenTCP(port, wrapped, backlog, interface)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int,
                        factory: IProtocolFactory) -> IListeningPort:
        if not check() or addressFamily not in (socket.AF_INET, socket.AF_INET6):
            port: IListeningPort = self._reactor.adoptStreamPort(
                fileDescriptor, addressFamily, factory)
            return port
        return self._prepare(GuardedPort._fromListeningDescriptor(
            self._reactor, fileDescriptor, addressFamily, factory))


def check() -> bool:
    """Verify once that a guarded port accepts, counts and adopts; log once if not."""
    global GUARDED, _checked
    if not _checked:
        _checked = True
        GUARDED = True  # the probe runs the guarded path itself
        try:
            GUARDED = _probe()
        except Exception:
            GUARDED = False
        if not GUARDED:
            _log.warn("guarded listening ports are off: the installed Twisted no longer "
                      "has what they use; no per-address connection limit, and Twisted's "
                      "own handling of the descriptor limit")
    return GUARDED


def _probe() -> bool:
    """A real loopback connection through a listened and an adopted guarded port."""
    clock = MemoryReactorClock()
    guard = DescriptorGuard(clock)
    listening = GuardedListening(clock, guard, PeerLimit(1))
    fresh = listening.listenTCP(0, _ProbeFactory(), 5, "127.0.0.1")
    with socket.socket() as raw:
        raw.bind(("127.0.0.1", 0))
        raw.listen(5)
        raw.setblocking(False)
        adopted = listening.adoptStreamPort(raw.fileno(), socket.AF_INET, _ProbeFactory())
    try:
        return all(_probe_port(port) for port in (fresh, adopted))
    finally:
        for port in (fresh, adopted):
            port.stopListening()
        clock.advance(0)
        guard.stop()


def _probe_port(port: Any) -> bool:
    """The first connection is served with its peer address, the second (same address)
    is closed at accept, and closing the first frees the address's slot."""
    if not isinstance(port, GuardedPort) or port.peers is None:
        return False
    factory = port.factory
    assert isinstance(factory, _ProbeFactory)
    where = port.getHost()
    first, second = socket.socket(), socket.socket()
    try:
        first.connect((where.host, where.port))
        second.connect((where.host, where.port))
        port.doRead()
        port.doRead()
        served = factory.built
        if len(served) != 1 or port.peers.held("127.0.0.1") != 1:
            return False
        transport = served[0].transport
        if not isinstance(transport, _CountedServer):
            return False
        peer = transport.getPeer()
        if (peer.host, peer.port) != first.getsockname():
            return False
        transport.connectionLost(Failure(ConnectionResetError()))
        return port.peers.held("127.0.0.1") == 0
    finally:
        first.close()
        second.close()


class _ProbeFactory(Factory):
    def __init__(self) -> None:
        self.built: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = Protocol()
        protocol.factory = self
        self.built.append(protocol)
        return protocol
