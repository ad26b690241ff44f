"""Cluster mode's one service: the PostgreSQL bus's reads and its LISTEN connection.

With ``[storage] backend = postgresql`` the hub's bus is a
:class:`~jmappushd.core.logbus.LogBus` over the store's change log, woken by the
store's NOTIFY (:class:`~jmappushd.store.pglisten.ListenWatcher`) and by its own
periodic tick. Both start once the core has positioned the hub (reads go from its
watermark) and stop before the store closes. It never delays "jmappushd ready": a
node whose LISTEN connection cannot be made yet still serves, reading the log on
its tick.
"""

from __future__ import annotations

import os
import socket

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorFDSet
from zope.interface import implementer

from jmappushd.config import Config
from jmappushd.core.hub import Hub
from jmappushd.core.logbus import LogBus
from jmappushd.endpointargs import endpoint_arguments
from jmappushd.reactor import IDaemonReactor
from jmappushd.store.pglisten import Channel, ListenWatcher
from jmappushd.store.pgpushops import PUSH_CHANNEL
from jmappushd.store.postgresql import PostgreSQLStore
from jmappushd.transports.interface import IStarted, ITransportService


@implementer(ITransportService)
class ClusterService(Service):
    """Starts the bus's reads and LISTEN after the core; stops them before it."""

    name = "cluster"

    def __init__(self, bus: LogBus, watcher: ListenWatcher, core: IStarted) -> None:
        self.bus = bus
        self.watcher = watcher
        self._core = core
        self._starting: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._starting = self._core.when_started()
        self._starting.addCallbacks(self._core_started, lambda _: None)

    def _core_started(self, _: object) -> None:
        if self.running:
            self.bus.start()
            self.watcher.start()

    def when_started(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.watcher.stop()
        return self.bus.stop()


def cluster_bus(store: PostgreSQLStore, reactor: IDaemonReactor) -> LogBus:
    """The hub's bus on a PostgreSQL store (attached to its hub by :func:`cluster_service`)."""
    return LogBus(store, reactor)


def cluster_service(bus: LogBus, hub: Hub, store: PostgreSQLStore, reactor: IDaemonReactor,
                    core: IStarted, push: Channel | None = None) -> ClusterService:
    """``push``: where push subscription changes go (the lease keeper), if anywhere."""
    bus.attach(hub)
    others = {PUSH_CHANNEL: push} if push is not None else None
    watcher = ListenWatcher(store.connector, reactor, IReactorFDSet(reactor), bus.wake,
                            others=others)
    return ClusterService(bus, watcher, core)


def node_name(config: Config) -> str:
    """``[cluster] node-name``, else the host name and the first listen port (or pid)."""
    if config.cluster.node_name:
        return config.cluster.node_name
    host = socket.gethostname().split(".")[0] or "node"
    for description in config.server.listen:
        args, kwargs = endpoint_arguments(description)
        port = kwargs.get("port") or next((a for a in args[1:] if a.isdigit()), "")
        if port.isdigit():
            return f"{host}:{port}"
    return f"{host}:{os.getpid()}"
