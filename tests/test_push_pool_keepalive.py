"""The Web Push HTTP pool keeps a connection per slot (study 17).

The slots let up to ``max-in-flight-per-origin`` POSTs run at once to one push
service; with fewer connections kept alive than that, every answer beyond the pool's
size closed its connection and the next POST opened one again (a TCP and a TLS
handshake per message under load).
"""

from __future__ import annotations

import dataclasses

import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock
from twisted.web import resource, server
from twisted.web.http_headers import Headers

from jmappushd.config import Config
from jmappushd.daemon.service import build_app
from jmappushd.transports.webpush.sender import build_agent
from jmappushd.transports.webpush.service import WebPushService
from tests.push_fakes import Harness
from tests.support import live_reactor, no_threads
from tests.test_push_start_races import CoreUp


class Created(resource.Resource):
    """Answers 201 and records the client port of each request (one per connection)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.ports: set[int] = set()

    def render_POST(self, request: server.Request) -> bytes:
        self.ports.add(getattr(request.getClientAddress(), "port", 0))
        request.setResponseCode(201)
        return b""


@pytest_twisted.ensureDeferred
async def test_waves_of_posts_reuse_one_connection_per_slot() -> None:
    """Three waves of eight concurrent POSTs to one origin open eight connections, not
    eight per wave: the pool keeps as many idle connections as may be in flight."""
    reactor = live_reactor()
    receiver = Created()
    site = server.Site(receiver)  # a ServerFactory of Twisted's untyped HTTP channels
    port: IListeningPort = reactor.listenTCP(0, site,  # type: ignore[arg-type]
                                             interface="127.0.0.1")
    agent, pool = build_agent(reactor, True, 5.0, keep_per_host=8)
    url = f"http://127.0.0.1:{port.getHost().port}/push".encode()  # type: ignore[attr-defined]

    async def post() -> int:
        response = await agent.request(b"POST", url, Headers({b"TTL": [b"60"]}))
        await treq.content(response)
        return int(response.code)

    try:
        for _ in range(3):
            codes = await defer.gatherResults(
                [defer.ensureDeferred(post()) for _ in range(8)])
            assert codes == [201] * 8
        assert len(receiver.ports) == 8
    finally:
        await pool.closeCachedConnections()
        await defer.maybeDeferred(port.stopListening)


def test_the_daemon_keeps_as_many_connections_as_one_origin_may_have_in_flight() -> None:
    """The service's pool follows ``[push] max-in-flight-per-origin``."""
    h = Harness()
    config = dataclasses.replace(h.config, max_in_flight_per_origin=7)
    app = build_app(dataclasses.replace(Config(), push=config), h.clock, h.store, no_threads)
    service = WebPushService(app, MemoryReactorClock(), CoreUp())  # type: ignore[arg-type]
    assert service.runtime._pool is not None
    assert service.runtime._pool.maxPersistentPerHost == 7
