"""The one reactor type the daemon's wiring accepts.

Every part takes the narrowest interface it needs (most only ``IReactorTime``); the
wiring in :mod:`jmappushd.daemon.service` needs the union of them all: listening
sockets (endpoint strings), thread pools (store, password KDF), name resolution and
outgoing TCP (push delivery, the gateway's upstream), Unix datagram sockets (Cyrus's
event notifications in gateway mode), and ``stop`` when start-up fails. Naming the union
lets mypy check that a test reactor, or the real one cast once in ``tap.py``,
provides what the wiring hands out.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUNIXDatagram,
)


class IDaemonReactor(
    IReactorCore,
    IReactorTime,
    IReactorTCP,
    IReactorThreads,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorUNIXDatagram,
):
    """What a reactor must provide to run the whole daemon."""
