"""send_now: whole messages leave at once, yet never overtake queued data or get lost.

Real TCP on 127.0.0.1 with Twisted's own transports, because send_now relies on
what a ``tcp.Server`` keeps queued.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from jmappushd.net.sendnow import send_now


class Held(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.lost.callback(None)


class HeldFactory(protocol.ServerFactory):
    protocol = Held

    def __init__(self) -> None:
        self.made: defer.Deferred[Held] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()


@pytest.fixture
def pair() -> Iterator[tuple[HeldFactory, socket.socket]]:
    factory = HeldFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    client = socket.create_connection(("127.0.0.1", address.port))
    client.settimeout(5)
    yield factory, client
    client.close()
    port.stopListening()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


@pytest_twisted.inlineCallbacks
def test_sent_before_returning(
        pair: tuple[HeldFactory, socket.socket]) -> Generator[Any, Any, None]:
    """With nothing queued the bytes are in the kernel when send_now returns, and the
    socket was never added to the reactor's writers."""
    factory, client = pair
    server = yield factory.made
    send_now(server.transport, b"event one\n")
    assert server.transport not in reactor.getWriters()
    assert read_exactly(client, 10) == b"event one\n"  # the reactor has not run since
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_never_overtakes_queued_data(
        pair: tuple[HeldFactory, socket.socket]) -> Generator[Any, Any, None]:
    """Data that Twisted still holds goes first; send_now then queues behind it."""
    factory, client = pair
    server = yield factory.made
    server.transport.write(b"first,")
    send_now(server.transport, b"second")
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(100)  # nothing may have jumped the queue
    client.setblocking(True)
    client.settimeout(5)
    data = yield threads.deferToThread(read_exactly, client, 12)
    assert data == b"first,second"
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_what_the_kernel_refuses_is_queued_in_order(
        pair: tuple[HeldFactory, socket.socket]) -> Generator[Any, Any, None]:
    """A message larger than the socket buffers is sent in part; the rest is queued
    (and counted for back-pressure), then a later message follows it exactly."""
    factory, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    server = yield factory.made
    server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    big = b"".join(struct.pack("!I", i) for i in range(500_000))  # 2 MB, position-coded
    send_now(server.transport, big)
    assert server.transport._tempDataLen > 0  # the kernel took only part of it
    send_now(server.transport, b"tail")
    data = yield threads.deferToThread(read_exactly, client, len(big) + 4)
    assert data == big + b"tail"
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_a_dead_peer_is_left_to_twisted(
        pair: tuple[HeldFactory, socket.socket]) -> Generator[Any, Any, None]:
    """A reset connection raises nothing here; Twisted notices and loses the connection."""
    factory, client = pair
    server = yield factory.made
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    for _ in range(20):
        send_now(server.transport, b"x" * 1000)
        if factory.lost.called:
            break
        yield threads.deferToThread(lambda: None)  # let the reactor see the reset
    yield factory.lost


def test_other_transports_just_queue() -> None:
    """TLS, test transports, anything but plain TCP: the ordinary write()."""
    transport = StringTransport()
    send_now(transport, b"hello")
    assert transport.value() == b"hello"
