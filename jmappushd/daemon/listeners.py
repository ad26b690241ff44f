"""A listening endpoint as a service that fails loudly, at once and in one line.

``strports.service`` reports a port that cannot be bound only through a private flag
(or later, in the log). The daemon must fail start-up synchronously instead, so that
twistd exits with the reason before claiming to run: a TCP or TLS endpoint's
``listen`` has already failed when it returns, and that failure is raised here as a
:class:`ListenError` whose text is the whole story ("cannot listen on tcp:8080: Address
already in use"). The port is bound in ``privilegedStartService`` (before twistd drops
privileges, and before any other part starts threads), or in ``startService`` when the
caller skips that phase.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from jmappushd.net.guardedport import GuardedListening
from jmappushd.net.peerlimit import PeerLimit
from jmappushd.net.reserve import DescriptorGuard
from jmappushd.reactor import IDaemonReactor


class ListenError(CannotListenError):
    """One endpoint cannot be bound; ``str()`` is the one line to print."""

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(None, description, reason)
        self.description = description
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot listen on {self.description}: {self.reason}"


def listen_failure_reason(failure: Failure) -> str:
    """"Address already in use", not CannotListenError's repr of the socket error."""
    error = failure.value
    if isinstance(error, CannotListenError):
        cause = error.socketError
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        return str(cause)
    return str(error) or type(error).__name__


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
        self._listening: defer.Deferred[None] | None = None  # bound or binding
        self._in_listen = False

    @property
    def port(self) -> IListeningPort | None:
        """The bound port; None before binding and after stopping."""
        return self._port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        super().startService()
        try:
            self._bind()
        except ListenError:
            self.running = False
            raise

    def _bind(self) -> None:
        """Listen once (twistd calls both start phases); raise ListenError if it failed."""
        if self._listening is not None:
            return
        now: list[Failure] = []
        self._in_listen = True
        try:
            self._listening = self._endpoint.listen(self._factory).addCallbacks(
                self._bound, self._failed, errbackArgs=(now,))
        finally:
            self._in_listen = False
        if now:
            self._listening = None
            raise ListenError(self.description, listen_failure_reason(now[0]))

    def _bound(self, port: IListeningPort) -> None:
        if self._listening is not None or self._in_listen:
            self._port = port
        else:
            port.stopListening()  # bound after the service was stopped

    def _failed(self, failure: Failure, now: list[Failure]) -> None:
        if self._in_listen:
            now.append(failure)  # raised by _bind: twistd prints it and exits
        else:
            self._listening = None
            self.log.error("cannot listen on {description}: {reason}",
                           description=self.description, reason=listen_failure_reason(failure))

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._listening = None
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, defer.Deferred) else defer.succeed(None)
