"""The bare proxy baseline: the floor of one Twisted hop in front of a JMAP server.

``POST /jmap/api/`` passes the body and the ``Authorization`` header to the upstream's
API URL with a bare Agent over a keep-alive pool (no cookies, no gzip: as the daemon's
upstream client) and the answer's status and body back, unread.
``/jmap/ws`` (bare Autobahn, subprotocol ``jmap``) parses each Request message, posts
its ``using`` and ``methodCalls`` upstream with the handshake's ``Authorization`` and
sends the answer back as a Response: the JSON work any WebSocket front of an HTTP-only
server must do. No session check, no limits, no logs: what the gateway benchmark
compares the daemon's own cost with.

    python -m benchmarks.baseline_proxy --port 9000 --upstream http://127.0.0.1:8008/jmap/
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import treq
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer


@implementer(IBodyProducer)
class Body:
    """A request body written at once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Upstream:
    """POST JSON to one URL over a keep-alive pool."""

    def __init__(self, url: str, connections: int) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = connections
        pool.retryAutomatically = False
        self.agent = Agent(reactor, pool=pool)  # type: ignore[arg-type]
        self.url = url.encode()

    def post(self, body: bytes, authorization: bytes) -> Deferred[Any]:
        headers = Headers({b"authorization": [authorization],
                           b"content-type": [b"application/json"]})
        return self.agent.request(b"POST", self.url, headers, Body(body))


class Forward(Resource):
    isLeaf = True

    def __init__(self, upstream: Upstream) -> None:
        super().__init__()
        self.upstream = upstream

    def render_POST(self, request: Request) -> Any:
        assert request.content is not None
        d = self.upstream.post(request.content.read(),
                               request.getHeader(b"authorization") or b"")

        def answer(response: Any) -> Deferred[None]:
            request.setResponseCode(response.code)
            request.setHeader(b"Content-Type", b"application/json")
            return treq.content(response).addCallback(write)

        def write(body: bytes) -> None:
            request.setHeader(b"Content-Length", b"%d" % len(body))
            request.write(body)

        def failed(failure: Failure) -> None:
            request.setResponseCode(502)
            request.write(str(failure.value).encode())

        d.addCallback(answer).addErrback(failed).addBoth(lambda _: request.finish())
        return NOT_DONE_YET


class ProxyProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    factory: ProxyFactory
    authorization = ""

    def onConnect(self, request: Any) -> str | None:
        self.authorization = request.headers.get("authorization", "")
        return "jmap" if "jmap" in request.protocols else None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        body = json.dumps({"using": message["using"], "methodCalls": message["methodCalls"]},
                          separators=(",", ":")).encode()
        d = self.factory.upstream.post(body, self.authorization.encode())
        d.addCallback(treq.json_content).addCallback(self.respond, message.get("id"))
        d.addErrback(lambda f: self.sendClose(1011))

    def respond(self, answer: dict[str, Any], request_id: str | None) -> None:
        self.sendMessage(json.dumps({"@type": "Response", "requestId": request_id, **answer},
                                    separators=(",", ":")).encode())


class ProxyFactory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = ProxyProtocol  # type: ignore[assignment]

    def __init__(self, url: str, upstream: Upstream) -> None:
        super().__init__(url=url, protocols=["jmap"])
        self.upstream = upstream


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="the upstream's API URL")
    p.add_argument("--connections", type=int, default=32, help="keep-alive pool size")
    args = p.parse_args()
    upstream = Upstream(args.upstream, args.connections)
    factory = ProxyFactory(f"ws://127.0.0.1:{args.port}/jmap/ws", upstream)
    factory.startFactory()
    jmap = Resource()
    jmap.putChild(b"api", Forward(upstream))
    jmap.putChild(b"ws", WebSocketResource(factory))
    root = Resource()
    root.putChild(b"jmap", jmap)
    site = Site(root)
    site.noisy = False
    reactor.listenTCP(args.port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    sys.stdout.write("proxy ready\n")
    sys.stdout.flush()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
