"""Helpers for the WebSocket tests (no tests here): a real Autobahn client, a raw
HTTP handshake, a client-frame encoder and server-frame decoder, and a fake
transport plus in-memory App for Clock-driven protocol tests."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from jmappushd.auth.authenticator import Authenticator, Principal
from jmappushd.config import Config
from jmappushd.context import App
from jmappushd.core.hub import Change, Hub, LocalBus
from jmappushd.daemon.service import build_registry
from jmappushd.jmap.processor import RequestProcessor
from jmappushd.jmap.session import SessionURLs
from jmappushd.metrics import Metrics
from jmappushd.store import MemoryStore
from jmappushd.store.records import Account
from jmappushd.transports.websocket.factory import JMAPWebSocketFactory
from jmappushd.transports.websocket.protocol import JMAPWebSocketProtocol
from jmappushd.transports.websocket.service import WEBSOCKET_CAPABILITY
from tests.store_backends import counting_ids, fired

CORE = "urn:ietf:params:jmap:core"
TIMEOUT = 10.0


def echo(call_id: str = "c1", rid: str | None = None, **args: Any) -> dict[str, Any]:
    """A WebSocket Request running Core/echo with ``args``."""
    message: dict[str, Any] = {"@type": "Request", "using": [CORE],
                               "methodCalls": [["Core/echo", args, call_id]]}
    if rid is not None:
        message["id"] = rid
    return message


# -- a real client on the real reactor --


class HandshakeRefused(Exception):
    """The server did not switch protocols."""


class Client(WebSocketClientProtocol):
    """Collects messages in a queue and exposes open/close as Deferreds."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox: defer.DeferredQueue[tuple[bytes, bool]] = defer.DeferredQueue()
        self.opened: defer.Deferred[Client] = defer.Deferred()
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self.selected: str | None = None
        self.pings = 0

    def onConnect(self, response: Any) -> None:
        self.selected = response.protocol

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.inbox.put((payload, isBinary))

    def onPing(self, payload: bytes) -> None:
        self.pings += 1
        super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(HandshakeRefused(reason))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def send(self, obj: Any) -> None:
        self.sendMessage(json.dumps(obj).encode())

    async def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        from twisted.internet import reactor

        d = self.inbox.get()
        d.addTimeout(timeout, reactor)
        payload, is_binary = await d
        assert not is_binary, "WS-8: every server message is a text frame"
        value = json.loads(payload)
        assert isinstance(value, dict)
        assert value["@type"] in ("Response", "RequestError", "StateChange"), value
        return value

    async def nothing(self, wait: float = 0.3) -> None:
        """Assert no message arrives within ``wait`` seconds."""
        from twisted.internet import reactor

        await task.deferLater(reactor, wait, lambda: None)
        assert not self.inbox.pending, [p for p, _ in self.inbox.pending]

    async def wait_closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
        from twisted.internet import reactor

        self.closed.addTimeout(timeout, reactor)
        return await self.closed

    async def bye(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)
        await self.wait_closed()


def basic_header(user: str, password: str = "secret") -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def connect(base: str, headers: Mapping[str, str] | None = None,
                  protocols: Iterable[str] = ("jmap",), query: str = "",
                  trust_pem: bytes | None = None, path: str = "/jmap/ws") -> Client:
    """Open a WebSocket to ``base`` + ``path`` with a real Autobahn client (wss:// when
    ``trust_pem``, the server certificate to trust, is given)."""
    from twisted.internet import reactor, ssl
    from twisted.internet.endpoints import SSL4ClientEndpoint

    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    scheme = "ws" if trust_pem is None else "wss"
    url = f"{scheme}://{parts.netloc}{path}{query}"
    factory = WebSocketClientFactory(url, protocols=list(protocols), headers=dict(headers or {}),
                                     reactor=reactor)
    factory.protocol = Client
    endpoint: Any
    if trust_pem is None:
        endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port, timeout=TIMEOUT)
    else:
        options = ssl.optionsForClientTLS(
            str(parts.hostname), trustRoot=ssl.Certificate.loadPEM(trust_pem))
        endpoint = SSL4ClientEndpoint(reactor, parts.hostname, parts.port, options,
                                      timeout=TIMEOUT)
    client = await endpoint.connect(factory)
    assert isinstance(client, Client)
    client.opened.addTimeout(TIMEOUT, reactor)
    return await client.opened


# -- a raw HTTP handshake, to see refusals exactly as sent --


class _RawHTTP(protocol.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        if not sep or self.done.called:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if head.startswith(b"HTTP/1.1 101") or len(body) >= length:
            self.done.callback(self.buffer)
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.done.called:
            self.done.callback(self.buffer)


def handshake_headers(protocols: str | None = "jmap", **extra: str) -> dict[str, str]:
    headers = {"Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    if protocols is not None:
        headers["Sec-WebSocket-Protocol"] = protocols
    headers.update(extra)
    return headers


async def raw_get(base: str, headers: Mapping[str, str], path: str = "/jmap/ws",
                  method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP request by hand; return status, headers (lower-cased) and body."""
    from twisted.internet import reactor

    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port, timeout=TIMEOUT)
    proto = await endpoint.connect(protocol.Factory.forProtocol(_RawHTTP))
    assert isinstance(proto, _RawHTTP) and proto.transport is not None
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    proto.done.addTimeout(TIMEOUT, reactor)
    raw = await proto.done
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), value.strip())
    return int(status_line.split()[1]), found, body


# -- frames, for driving the server protocol without a socket --


def client_frame(payload: bytes, opcode: int = 1, fin: bool = True,
                 mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    """One masked client-to-server frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames into ``(opcode, payload)`` pairs."""
    frames = []
    while data:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        i = 2
        if n == 126:
            n, i = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, i = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[i:i + n]))
        data = data[i + n:]
    return frames


HANDSHAKE = (b"GET /jmap/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: jmap\r\n\r\n")


class FakeTransport(StringTransport):
    """A StringTransport whose close reaches the protocol on the next Clock turn."""

    protocol: JMAPWebSocketProtocol  # set by the stand-in resource

    def __init__(self, clock: task.Clock) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.clock = clock
        self.aborted = False
        self.reading = True

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()

    def take(self) -> list[tuple[int, bytes]]:
        data = self.value()
        self.clear()
        return server_frames(data)

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(p) for op, p in self.take() if op == 1]


class _Stand_in_Resource:
    """Does what Autobahn's WebSocketResource does with a transport, minus twisted.web."""

    def __init__(self, factory: JMAPWebSocketFactory, transport: FakeTransport) -> None:
        self.factory = factory
        self.transport = transport

    def render(self, request: object) -> Any:
        proto = self.factory.buildProtocol(self.transport.getPeer())
        assert proto is not None
        self.transport.protocol = proto
        proto.makeConnection(self.transport)
        proto.dataReceived(HANDSHAKE)
        return proto


class WSStore(MemoryStore):
    """The memory store with users made in one call, and each catch-up answer held until
    the test fires ``pending_query``. The change log starts at seq 5: A's Mailbox m and
    Email old were recorded after seq 3."""

    def __init__(self) -> None:
        super().__init__(make_id=counting_ids())
        self.open()
        for changed in ({"Z": {"Email": "z1"}}, {"Z": {"Email": "z2"}}, {"Z": {"Email": "z3"}},
                        {"A": {"Mailbox": "m"}}, {"A": {"Email": "old"}}):
            self.record_changes(changed)

    def add(self, name: str, account_id: str) -> Principal:
        """A user with its personal account, and the Principal of a password login."""
        user = fired(self.add_user(name, "", account_id))
        accounts = (Account(account_id, name, True),)
        return Principal(user.id, name, "password:" + user.id, accounts, account_id)

    def changes_since(self, seq: int, account_ids: Collection[str]
                      ) -> defer.Deferred[dict[str, dict[str, str]]]:
        answer = super().changes_since(seq, account_ids)
        self.pending_query: defer.Deferred[None] = defer.Deferred()
        return self.pending_query.addCallback(lambda _: answer)


class Harness:
    """An App on a task.Clock with an in-memory hub, and connections on fake transports."""

    def __init__(self, config: Config) -> None:
        self.clock = task.Clock()
        self.store = WSStore()
        self.bus = LocalBus()
        registry = build_registry()
        self.app = App(
            config=config, clock=self.clock, store=self.store,
            hub=Hub(self.store, self.bus),
            auth=Authenticator(self.store, self.clock,
                               lambda f, *a: defer.succeed(f(*a)), 0),
            registry=registry,
            processor=RequestProcessor(registry, config.jmap.max_calls_in_request),
            metrics=Metrics(), urls=SessionURLs(config.server.public_url),
        )
        registry.add_capability(WEBSOCKET_CAPABILITY, {"url": "", "supportsPush": True})
        self.factory = JMAPWebSocketFactory(self.app, reactor=self.clock)
        self.app.auth.on_invalidate(self.factory.registry.invalidate)
        defer.ensureDeferred(self.app.hub.start())  # position and token key: at once here
        self.seq = 0

    def connect(self, principal: Principal) -> tuple[JMAPWebSocketProtocol, FakeTransport]:
        transport = FakeTransport(self.clock)
        proto = self.factory.upgrade(_Stand_in_Resource(self.factory, transport),
                                     Request(DummyChannel()), principal)
        assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()
        transport.clear()
        return proto, transport

    def send(self, proto: JMAPWebSocketProtocol, obj: Any) -> None:
        proto.dataReceived(client_frame(json.dumps(obj).encode()))

    def publish(self, changed: Mapping[str, Mapping[str, str]]) -> Change:
        """Announce a change as the hub would after recording it."""
        self.seq = max(self.seq, self.app.hub.last_seq) + 1
        change = Change(self.seq, changed)
        self.bus.announce(change)
        return change

    def token(self, principal: Principal, change: Change) -> str:
        """The pushState ``principal``'s connections got with ``change`` (one per user)."""
        return self.app.hub.tokens.shared(principal.user_id, change.position)

    def seal(self, principal: Principal, position: int) -> str:
        """A fresh token of ``principal`` for ``position``, as a client would hold one."""
        return self.app.hub.tokens.seal(principal.user_id, position)



def self_signed(directory: Path) -> tuple[Path, Path, bytes]:
    """A key and certificate for 127.0.0.1 (IP SAN); returns key path, cert path, cert PEM."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(pem)
    return key_path, cert_path, pem


def write_config(tmp_path: Path, websocket: str = "", jmap: str = "") -> Config:
    from tests.support import make_config

    sections = {"websocket": websocket} if websocket else {}
    if jmap:
        sections["jmap"] = jmap
    return make_config(tmp_path, sections=sections)
