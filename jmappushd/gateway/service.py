"""Gateway mode as a child of the daemon: its change source and the re-check of live
connections' credentials run while the daemon runs."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from jmappushd.gateway.revalidate import LiveConnections
from jmappushd.gateway.wiring import Gateway
from jmappushd.transports.interface import IStarted, ITransportService


@implementer(ITransportService)
class GatewayService(MultiService):
    """Starts the change source after the core (publishes need the hub); stops it, the
    pending state reads and the upstream pool before the store closes."""

    def __init__(self, gateway: Gateway, core: IStarted,
                 connections: Sequence[LiveConnections] = ()) -> None:
        """``connections``: the EventSource and WebSocket registries, whose members'
        credentials the upstream is asked about again every cache-ttl."""
        super().__init__()
        self.gateway = gateway
        self._core = core
        for source in gateway.sources:
            source.setServiceParent(self)
        self.revalidator = gateway.revalidator(connections)
        self.revalidator.setServiceParent(self)

    def when_started(self) -> Deferred[None]:
        return self._core.when_started()

    def stopService(self) -> Deferred[None]:
        stopped = defer.maybeDeferred(super().stopService)
        if self.gateway.states is not None:
            self.gateway.states.stop()

        def close(_: object) -> Deferred[None]:
            return self.gateway.client.close()

        return stopped.addBoth(close)
