"""``reuseport:`` endpoints: one port shared by several daemons on one machine (issue 13).

Cluster nodes on one host can serve one public port, the kernel spreading new connections
among them, if each listening socket has Linux's ``SO_REUSEPORT`` set before ``bind``.
Twisted's ``tcp:`` has no such option, so ``reuseport:`` wraps a ``tcp:``, ``tcp6:`` or
``ssl:`` endpoint string (``reuseport:tcp:8080:interface=0.0.0.0``). Twisted parses the
wrapped string as usual, against :class:`ReusePortListening`, which stands in for the
reactor: its ``listenTCP`` makes the socket itself and hands it to the reactor's public
``adoptStreamPort``, and its ``listenSSL`` wraps the factory in TLS over that, as Twisted's
own reactors do. Under the daemon that reactor is
:class:`~jmappushd.net.guardedport.GuardedListening`, so the port is guarded (connections
per address, the descriptor limit) like a ``tcp:`` one.

Linux only: elsewhere the option is missing or does not spread connections (macOS), and the
endpoint refuses to parse with one line. Linux lets only sockets of the same effective user
share a port, and a socket without the option cannot bind the port while ours is open
(``EADDRINUSE``).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.protocols.tls import TLSMemoryBIOFactory

from jmappushd.endpointargs import REUSEPORT, endpoint_description

WRAPPABLE = ("tcp", "tcp6", "ssl")
"""The endpoint types a ``reuseport:`` endpoint may wrap."""

_PLATFORM = sys.platform  # a name of its own, so that a test can pretend to be elsewhere

_EXAMPLE = f"e.g. {REUSEPORT}:tcp:8080:interface=0.0.0.0"


def parse(reactor: Any, args: Sequence[str], kwargs: dict[str, str]) -> IStreamServerEndpoint:
    """The wrapped endpoint, listening through :class:`ReusePortListening` on ``reactor``.

    ``args`` and ``kwargs`` are what Twisted split after ``reuseport:``. Raises ValueError
    (one line) on another platform, without a wrapped ``tcp:``/``tcp6:``/``ssl:`` endpoint,
    or for a port or interface the socket could not be bound to (checked here, without
    binding, so that a config check finds it).
    """
    if not _PLATFORM.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError(f"{REUSEPORT}: endpoints need Linux (SO_REUSEPORT); "
                         f"this is {_PLATFORM}")
    if not args or args[0] not in WRAPPABLE:
        wrapped = f"{args[0]}:" if args else "nothing"
        raise ValueError(f"{REUSEPORT}: wraps a tcp:, tcp6: or ssl: endpoint, not {wrapped} "
                         f"({_EXAMPLE})")
    inner = endpoint_description(list(args), kwargs)
    _check_address(inner)
    endpoint: IStreamServerEndpoint = serverFromString(ReusePortListening(reactor), inner)
    return endpoint


def _check_address(inner: str) -> None:
    """Listen on a MemoryReactor to learn the port and interface Twisted parsed."""
    probe = MemoryReactor()
    serverFromString(probe, inner).listen(Factory()).addErrback(lambda _: None)
    # tcpServers: (port, factory, backlog, interface); sslServers: (..., backlog, interface)
    for server in (*probe.tcpServers, *probe.sslServers):
        port, interface = server[0], server[-1]
        bind_address(interface, port)


def bind_address(interface: str, port: int) -> tuple[int, tuple[Any, ...]]:
    """``(family, sockaddr)`` for ``bind``; ``""`` is every IPv4 address, as in ``tcp:``.

    Numeric addresses only (an IPv6 one may carry a ``%scope``): a host name would need a
    name lookup, which blocks.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    try:
        family, _, _, _, where = socket.getaddrinfo(
            interface or "0.0.0.0", port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,  # noqa: S104
            socket.AI_NUMERICHOST | socket.AI_NUMERICSERV | socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"interface {interface!r} is not an IP address") from None
    return family, where


class ReusePortListening:
    """The reactor, as the wrapped endpoint sees it: its ports get ``SO_REUSEPORT``."""

    def __init__(self, reactor: Any) -> None:
        # Any: a façade for serverFromString (as GuardedListening is); the daemon's
        # reactor, a GuardedListening in front of it, or a test's reactor.
        self._reactor = reactor

    def __getattr__(self, name: str) -> object:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50,
                  interface: str = "") -> IListeningPort:
        """Bind and listen with ``SO_REUSEADDR`` (as Twisted does) and ``SO_REUSEPORT``,
        then let the reactor adopt the socket; CannotListenError if that fails."""
        try:
            family, where = bind_address(interface, port)
        except ValueError as e:
            raise CannotListenError(interface, port, e) from None
        skt = socket.socket(family, socket.SOCK_STREAM)
        try:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            skt.bind(where)
            skt.listen(backlog)
            skt.setblocking(False)
            listening: IListeningPort = self._reactor.adoptStreamPort(
                skt.fileno(), family, factory)
        except OSError as e:
            raise CannotListenError(interface, port, e) from None
        finally:
            skt.close()  # the adopted port holds a duplicate of the descriptor
        return listening

    def listenSSL(self, port: int, factory: IProtocolFactory, contextFactory: Any,
                  backlog: int = 50, interface: str = "") -> IListeningPort:
        """TLS as a protocol wrapper over a SO_REUSEPORT TCP port."""
        wrapped = TLSMemoryBIOFactory(contextFactory, False, factory)
        return self.listenTCP(port, wrapped, backlog, interface)
