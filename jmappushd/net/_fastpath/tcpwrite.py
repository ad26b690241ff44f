"""Twisted TCP: the write queue of a ``tcp.Server`` (``send_now``'s direct ``send()``)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import abstract, tcp
from twisted.internet.testing import MemoryReactor

TCP_SEND = all(hasattr(abstract.FileDescriptor, a)
               for a in ("dataBuffer", "offset", "_writeDisconnected", "connected",
                         "disconnecting"))
"""``send_now`` may call ``socket.send`` on a ``tcp.Server`` with an empty write queue."""


_WRITE_PATH = ("write", "writeSequence", "doWrite", "writeSomeData", "startWriting",
               "stopWriting", "loseConnection", "loseWriteConnection", "startTLS",
               "_postLoseConnection", "_closeWriteConnection", "_isSendBufferFull")
"""What a subclass of ``tcp.Server`` must inherit unchanged for a direct send to be
what its ``write`` would do (the guarded port's connections only add to
``connectionLost``)."""


_plain_servers: dict[type, bool] = {tcp.Server: True}


def _writes_as_tcp_server(cls: type) -> bool:
    """True if ``cls`` is ``tcp.Server`` or a subclass that keeps its whole write path."""
    plain = _plain_servers.get(cls)
    if plain is None:
        plain = issubclass(cls, tcp.Server) and all(
            getattr(cls, name, None) is getattr(tcp.Server, name, None)
            for name in _WRITE_PATH)
        _plain_servers[cls] = plain
    return plain


def tcp_idle_socket(transport: Any) -> socket.socket | None:
    """The socket of a plain TCP server connection with nothing queued, else ``None``.

    Reproduces the test Twisted's ``FileDescriptor.write`` leaves to ``doWrite``: data
    may go to the kernel now only if nothing is buffered (``_tempDataLen``, the unsent
    part of ``dataBuffer`` after ``offset``) and writing was not shut down. A subclass
    counts as plain when it leaves the write path alone (:func:`_writes_as_tcp_server`).
    """
    if (TCP_SEND and _writes_as_tcp_server(type(transport)) and transport.connected
            and not transport.disconnecting and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and not transport._writeDisconnected):
        sock: socket.socket = transport.socket
        return sock
    return None


def probe_tcp_send() -> bool:
    """A queued write shows in ``_tempDataLen``; with the queue empty a send is direct."""
    ours, theirs = socket.socketpair()
    try:
        # A bare Server for the probe: no listening Port, a protocol that only connects.
        server = tcp.Server(ours, Null(), ("127.0.0.1", 1), None, 0,  # type: ignore[arg-type]
                            MemoryReactor())
        if tcp_idle_socket(server) is not ours:
            return False
        server.write(b"q")
        return tcp_idle_socket(server) is None and server._tempDataLen == 1
    finally:
        ours.close()
        theirs.close()


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a TCP connection on 127.0.0.1 (a ``tcp.Server`` asks for addresses)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname()[:2])
        ours, _ = listener.accept()
    return ours, theirs


class Null:
    """The least a ``tcp.Server`` needs from its protocol for the probe."""

    def makeConnection(self, transport: object) -> None:
        """Nothing to set up."""
