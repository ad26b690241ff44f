"""A listening endpoint as a service that fails loudly and at once.

``strports.service`` reports a port that cannot be bound only through a private flag
(or later, in the log). The daemon must fail start-up synchronously instead, so that
twistd exits with the reason before claiming to run: a TCP or TLS endpoint's
``listen`` has already failed when it returns, and that failure is raised here.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from jmappushd.net.guardedport import GuardedListening
from jmappushd.net.peerlimit import PeerLimit
from jmappushd.net.reserve import DescriptorGuard
from jmappushd.reactor import IDaemonReactor


class ListenerService(Service):
    """Listens on one endpoint string (``tcp:8080:interface=127.0.0.1``, ``ssl:...``).

    TCP, TLS and ``systemd:`` endpoints listen on guarded ports
    (:mod:`jmappushd.net.guardedport`): ``max_per_address`` (0 = no limit) bounds the
    connections one peer address may hold open, closing more at accept, and at the
    descriptor limit ``guard`` (the daemon's shared spare descriptor; one of its own if
    not given) sheds queued connections instead of the reactor spinning on ``EMFILE``.
    """

    log = Logger()

    def __init__(self, reactor: IDaemonReactor, description: str,
                 factory: IProtocolFactory, max_per_address: int = 0,
                 guard: DescriptorGuard | None = None) -> None:
        self.description = description
        self.guard = guard if guard is not None else DescriptorGuard(reactor)
        self.peers = PeerLimit(max_per_address) if max_per_address else None
        self._endpoint = serverFromString(GuardedListening(reactor, self.guard, self.peers),
                                          description)
        self._factory = factory
        self._port: IListeningPort | None = None
        self._listening = False

    def startService(self) -> None:
        super().startService()
        now: list[Failure] = []
        self._listening = True
        try:
            self._endpoint.listen(self._factory).addCallbacks(self._bound, self._failed,
                                                              errbackArgs=(now,))
        finally:
            self._listening = False
        if now:
            self.running = False
            now[0].raiseException()

    def _bound(self, port: IListeningPort) -> None:
        if self.running:
            self._port = port
        else:
            port.stopListening()  # bound after the service was stopped

    def _failed(self, failure: Failure, now: list[Failure]) -> None:
        if self._listening:
            now.append(failure)  # raised by startService: twistd reports it and exits
        else:
            self.log.failure("cannot listen on {description}", failure,
                             description=self.description)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, defer.Deferred) else defer.succeed(None)
