"""The bare proxy baseline: the floor of one Twisted hop in front of a JMAP server.

``POST /jmap/api/`` passes the body and the ``Authorization`` header to the upstream's
API URL over a treq keep-alive pool and the answer's status and body back, unread.
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
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

JSON = {"Content-Type": "application/json"}


def client(connections: int) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = connections
    pool.retryAutomatically = False
    return HTTPClient(Agent(reactor, pool=pool))  # type: ignore[arg-type]


class Forward(Resource):
    isLeaf = True

    def __init__(self, http: HTTPClient, upstream: str) -> None:
        super().__init__()
        self.http = http
        self.upstream = upstream

    def render_POST(self, request: Request) -> Any:
        assert request.content is not None
        headers = {**JSON, "Authorization": request.getHeader("authorization") or ""}
        d = self.http.post(self.upstream, data=request.content.read(), headers=headers)

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
        d = self.factory.http.post(self.factory.upstream, data=body,
                                   headers={**JSON, "Authorization": self.authorization})
        d.addCallback(treq.json_content).addCallback(self.respond, message.get("id"))
        d.addErrback(lambda f: self.sendClose(1011))

    def respond(self, answer: dict[str, Any], request_id: str | None) -> None:
        self.sendMessage(json.dumps({"@type": "Response", "requestId": request_id, **answer},
                                    separators=(",", ":")).encode())


class ProxyFactory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = ProxyProtocol  # type: ignore[assignment]

    def __init__(self, url: str, http: HTTPClient, upstream: str) -> None:
        super().__init__(url=url, protocols=["jmap"])
        self.http = http
        self.upstream = upstream


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="the upstream's API URL")
    p.add_argument("--connections", type=int, default=32, help="keep-alive pool size")
    args = p.parse_args()
    http = client(args.connections)
    factory = ProxyFactory(f"ws://127.0.0.1:{args.port}/jmap/ws", http, args.upstream)
    factory.startFactory()
    jmap = Resource()
    jmap.putChild(b"api", Forward(http, args.upstream))
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
