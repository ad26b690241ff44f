"""The bare baseline server: SSE at /events, WebSocket at /ws, POST /publish on an admin port.

``/publish`` takes the same StateChange body as jmappushd's admin endpoint, makes a
token in the same format, encodes the two messages jmappushd would send (an SSE
``state`` event and a WebSocket StateChange with ``pushState``) once, writes them
to every open connection and answers 202 like the daemon. It records nothing.
With ``--routes`` each account's part goes only to that account's connections
(encoded once per account), as the throughput benchmark needs.
``POST /api`` and Request messages on ``/ws`` get a canned Core/echo answer: the
floor of a round trip through twisted.web and through Autobahn. ``POST /push/...``
on the admin port is a push service receiver that answers 201 to everything.

    python -m benchmarks.baseline_server --port 9000 --admin-port 9001
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from benchmarks.baseline_sse import BareEventSource
from benchmarks.baseline_ws import BareFactory, bare_resource, echo_response


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


class Publish(Resource):
    isLeaf = True

    def __init__(self, sse: BareEventSource, ws: BareFactory, routed: bool) -> None:
        super().__init__()
        self.sse, self.ws = sse, ws
        self.routed = routed
        self.epoch = secrets.token_hex(8)
        self.seq = 0

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        changed = json.loads(request.content.read())["changed"]
        self.seq += 1
        token = f"{self.epoch}-{_base36(self.seq)}"
        if self.routed:
            for account, types in changed.items():
                self.write_all({account: types}, token, self.sse.send_to, self.ws.send_to,
                               account)
        else:
            self.write_all(changed, token, lambda _, data: self.sse.broadcast(data),
                           lambda _, data: self.ws.broadcast(data), "")
        request.setResponseCode(202)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"seq": self.seq, "token": token}).encode()


    @staticmethod
    def write_all(changed: dict[str, Any], token: str, sse_send: Callable[[str, bytes], None],
                  ws_send: Callable[[str, bytes], None], account: str) -> None:
        """Encode the SSE event and the WebSocket StateChange once, write each to its side."""
        change = json.dumps({"@type": "StateChange", "changed": changed},
                            separators=(",", ":")).encode()
        sse_send(account, b"event: state\nid: %s\ndata: %s\n\n" % (token.encode(), change))
        ws_send(account, json.dumps({"@type": "StateChange", "changed": changed,
                                     "pushState": token}, separators=(",", ":")).encode())


class BareAPI(Resource):
    """``POST /api``: parse the JSON body and answer Core/echo, no authentication."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = echo_response(None, json.loads(request.content.read()))
        request.setHeader(b"Content-Type", b"application/json")
        return body


class PushReceiver(Resource):
    """``POST /push/...``: a push service that accepts every message (201), for Web Push."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received = 0

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        request.content.read()
        self.received += 1
        request.setResponseCode(201)
        return b""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin-port", type=int, required=True)
    p.add_argument("--backlog", type=int, default=1024)
    p.add_argument("--routes", default="",
                   help="JSON file mapping Authorization values to accounts: publishes "
                        "then reach only the connections of the accounts they name")
    args = p.parse_args()
    routes: dict[str, str] = {}
    if args.routes:
        with open(args.routes) as handle:
            routes = json.load(handle)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sse = BareEventSource(routes)
    ws_resource, ws = bare_resource(f"ws://127.0.0.1:{args.port}/ws", routes)
    root = Resource()
    root.putChild(b"events", sse)
    root.putChild(b"ws", ws_resource)
    root.putChild(b"api", BareAPI())
    admin = Resource()
    admin.putChild(b"publish", Publish(sse, ws, routed=bool(routes)))
    admin.putChild(b"push", PushReceiver())
    site, admin_site = Site(root), Site(admin)
    site.noisy = admin_site.noisy = False
    reactor.listenTCP(args.port, site, backlog=args.backlog,  # type: ignore[attr-defined,arg-type]
                      interface="127.0.0.1")
    reactor.listenTCP(args.admin_port, admin_site,  # type: ignore[attr-defined,arg-type]
                      interface="127.0.0.1")
    sys.stdout.write("baseline ready\n")
    sys.stdout.flush()
    reactor.run()  # type: ignore[attr-defined,arg-type]


if __name__ == "__main__":
    main()
