"""Bare Autobahn baseline: a WebSocketResource whose connections only receive broadcasts.

Autobahn's defaults (no auto-ping), the ``jmap`` subprotocol accepted, incoming
messages ignored: the floor a daemon WebSocket connection is compared to. With
``routes`` (Authorization value -> account) connections are filed by account.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol


class BareProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    factory: BareFactory

    account: str | None = None

    def onConnect(self, request: Any) -> str | None:
        self.account = self.factory.routes.get(request.headers.get("authorization", ""))
        return "jmap" if "jmap" in request.protocols else None

    def onOpen(self) -> None:
        self.factory.clients[self] = None
        if self.account is not None:
            self.factory.by_account.setdefault(self.account, {})[self] = None

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.clients.pop(self, None)
        if self.account is not None:
            self.factory.by_account.get(self.account, {}).pop(self, None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Answer a Request with a canned echo Response; ignore everything else."""
        message = json.loads(payload)
        if message.get("@type") == "Request":
            self.sendMessage(echo_response(message.get("id"), message))


def echo_response(request_id: str | None, request: dict[str, Any]) -> bytes:
    """What a JMAP server answers to Core/echo, without any JMAP machinery."""
    calls = request.get("methodCalls") or [["Core/echo", {}, "c0"]]
    response: dict[str, Any] = {"methodResponses": calls, "sessionState": "0"}
    if request_id is not None:
        response = {"@type": "Response", "requestId": request_id, **response}
    return json.dumps(response, separators=(",", ":")).encode()


class BareFactory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = BareProtocol  # type: ignore[assignment]

    def __init__(self, url: str, routes: dict[str, str] | None = None) -> None:
        super().__init__(url=url, protocols=["jmap"])
        self.clients: dict[BareProtocol, None] = {}
        self.routes = routes or {}
        self.by_account: dict[str, dict[BareProtocol, None]] = {}

    def broadcast(self, data: bytes) -> None:
        for client in self.clients:
            client.sendMessage(data)

    def send_to(self, account: str, data: bytes) -> None:
        for client in self.by_account.get(account, ()):
            client.sendMessage(data)


def bare_resource(url: str, routes: dict[str, str] | None = None
                  ) -> tuple[WebSocketResource, BareFactory]:
    factory = BareFactory(url, routes)
    factory.startFactory()
    return WebSocketResource(factory), factory
