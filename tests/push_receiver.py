"""A real push service for tests: HTTPS on 127.0.0.1, decrypting every body with http_ece.

It plays RFC 8030's push service: it records each POST, checks VAPID with
``verify_vapid_header`` (against the URL's origin), decrypts aes128gcm bodies with the
independent ``http-ece`` package and the user agent key of that path, and answers what
the test told it to: 201, 404, 410, 429 with Retry-After, 500, or nothing at all (hang).
Waiting is event-driven with a bounded timeout, never a fixed sleep.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import http_ece
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorSSL, ITCPTransport
from twisted.internet.ssl import PrivateCertificate
from twisted.logger import ILogObserver
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from jmappushd.transports.webpush.b64 import b64url_encode
from jmappushd.transports.webpush.ece import public_bytes
from tests.support import RequestHeaders
from tests.vapid_check import verify_vapid_header


def make_certificate(directory: Path) -> tuple[bytes, bytes, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 (and push.test); returns PEMs and the
    path of a CA file suitable for SSL_CERT_FILE."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jmappushd test push service")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("push.test")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    ca_file = directory / "push-ca.pem"
    ca_file.write_bytes(cert_pem)
    return cert_pem, key_pem, ca_file


class UserAgent:
    """A browser's subscription keys (``keys.p256dh`` and ``keys.auth``)."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.auth = b"fedcba9876543210"

    @property
    def keys(self) -> dict[str, str]:
        return {"p256dh": b64url_encode(public_bytes(self.private.public_key())),
                "auth": b64url_encode(self.auth)}


@dataclass
class Received:
    """One POST as the push service saw it."""

    path: str
    headers: dict[str, list[str]]
    body: bytes
    message: Any = None
    claims: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


Answer = tuple[int, dict[str, str]] | None  # None: hang


class PushService(Resource):
    """The resource; ``answers`` per path is a queue, then ``default`` applies."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.agents: dict[str, UserAgent] = {}
        self.received: list[Received] = []
        self.errors: list[str] = []
        self.answers: dict[str, list[Answer]] = {}
        self.default: Answer = (201, {})
        self.hanging: list[Request] = []
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def agent(self, path: str) -> UserAgent:
        return self.agents.setdefault(path, UserAgent())

    def script(self, path: str, *answers: Answer) -> None:
        self.answers.setdefault(path, []).extend(answers)

    def render_POST(self, request: Request) -> Any:
        path = request.path.decode()
        assert request.content is not None
        item = Received(path, {k.decode().lower(): [v.decode() for v in vs]
                               for k, vs in request.requestHeaders.getAllRawHeaders()},
                        request.content.read(), at=time.monotonic())
        self._check(item)
        self.received.append(item)
        queue = self.answers.get(path)
        answer = queue.pop(0) if queue else self.default
        self._wake()
        if answer is None:
            self.hanging.append(request)
            return NOT_DONE_YET
        code, headers = answer
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return b""

    def _check(self, item: Received) -> None:
        """VAPID-1..VAPID-4 and ENC-*: verify the JWT and decrypt with the independent peer."""
        try:
            origin = f"https://{item.header('host')}"
            item.claims = verify_vapid_header(item.header("authorization") or "", time.time(),
                                              audience=origin)
            body = item.body
            if item.header("content-encoding") == "aes128gcm":
                agent = self.agent(item.path)
                body = http_ece.decrypt(body, private_key=agent.private,
                                        auth_secret=agent.auth, version="aes128gcm")
            item.message = json.loads(body)
        except Exception as exc:
            self.errors.append(f"{item.path}: {exc!r}")

    def _wake(self) -> None:
        for check, d in list(self._waiters):
            if check():
                self._waiters.remove((check, d))
                d.callback(None)

    async def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        """Fire when ``check()`` holds after a POST, or fail after ``timeout`` seconds."""
        from twisted.internet import reactor

        if check():
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((check, d))
        d.addTimeout(timeout, reactor)
        try:
            await d
        except defer.TimeoutError:
            self._waiters = [w for w in self._waiters if w[1] is not d]
            raise AssertionError(f"push service: condition not met in {timeout}s; "
                                 f"received {[(r.path, r.message) for r in self.received]}, "
                                 f"errors {self.errors}") from None

    async def wait_count(self, path: str, count: int, timeout: float = 10.0) -> list[Received]:
        await self.wait_for(lambda: len(self.on(path)) >= count, timeout)
        return self.on(path)

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


class ReceiverServer:
    """The listening push service; ``url(path)`` gives a subscription URL."""

    def __init__(self, directory: Path) -> None:
        from twisted.internet import reactor

        cert_pem, key_pem, self.ca_file = make_certificate(directory)
        self.cert_pem = cert_pem
        self.service = PushService()
        options = PrivateCertificate.loadPEM(cert_pem + key_pem).options()
        self._port = IReactorSSL(reactor).listenSSL(0, Site(self.service), options,
                                                    interface="127.0.0.1")
        host = self._port.getHost()
        assert isinstance(host, IPv4Address)
        self.port = host.port

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    async def close(self) -> None:
        for request in self.service.hanging:
            if request.channel is not None and request.channel.transport is not None:
                cast(ITCPTransport, request.channel.transport).abortConnection()
        stopped = self._port.stopListening()
        assert stopped is not None  # a listening TCP port stops asynchronously
        await stopped


CORE = "urn:ietf:params:jmap:core"
FAST = ("push-throttle = 0\npush-retry-interval = 50\npush-attempt-interval = 300\n"
        "push-timeout = 2000\ncreate-rate = 1000\n")


@dataclass
class PushWorld:
    """An in-process daemon plus a push service it may reach (``allow-private-urls``)."""

    daemon: Any
    receiver: ReceiverServer

    @property
    def service(self) -> PushService:
        return self.receiver.service

    async def jmap(self, calls: list[Any], headers: RequestHeaders, **extra: Any) -> Any:
        """POST a Request; returns the Response object (asserting HTTP 200)."""
        r = await self.daemon.api({"using": [CORE], "methodCalls": calls, **extra}, headers)
        assert r.code == 200, (r.code, await r.text())
        return await r.json()

    async def call(self, name: str, args: dict[str, Any], headers: RequestHeaders) -> Any:
        """One method call; returns ``[name, arguments]`` of its response."""
        [[out_name, out_args, _]] = (await self.jmap([[name, args, "0"]], headers))[
            "methodResponses"]
        return out_name, out_args

    async def create(self, headers: RequestHeaders, path: str = "/sub", **props: Any) -> str:
        """Create a subscription with keys for ``path``; returns its id."""
        obj = {"deviceClientId": "phone", "url": self.receiver.url(path),
               "keys": self.service.agent(path).keys, **props}
        _, out = await self.call("PushSubscription/set", {"create": {"c": obj}}, headers)
        assert out["created"] and "c" in out["created"], out
        return str(out["created"]["c"]["id"])

    async def verify(self, sub_id: str, headers: RequestHeaders, path: str = "/sub") -> None:
        """Read the code the push service got and write it back (PS-15)."""
        await self.service.wait_for(lambda: any(
            r.path == path and isinstance(r.message, dict)
            and r.message.get("pushSubscriptionId") == sub_id for r in self.service.received))
        code = next(r.message["verificationCode"] for r in self.service.on(path)
                    if r.message.get("pushSubscriptionId") == sub_id)
        _, out = await self.call("PushSubscription/set",
                                 {"update": {sub_id: {"verificationCode": code}}}, headers)
        assert out["updated"] == {sub_id: None}, out

    async def close(self) -> None:
        from tests.support import stop_daemon

        await stop_daemon(self.daemon)
        await self.receiver.close()


async def start_world(tmp_path: Path, monkeypatch: Any, extra: str = FAST,
                      sections: dict[str, str] | None = None, allow_private: bool = True
                      ) -> PushWorld:
    """Start the receiver, trust its certificate (SSL_CERT_FILE), then the daemon."""
    from jmappushd.config import parse_config
    from tests.support import config_text, free_port, start_daemon

    receiver = ReceiverServer(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
    text = config_text(tmp_path / "state", free_port(), free_port(), extra)
    if not allow_private:
        text = text.replace("allow-private-urls = true", "allow-private-urls = false")
    for name, body in (sections or {}).items():
        text += f"\n[{name}]\n{body}\n"
    path = tmp_path / "jmappushd.ini"
    path.write_text(text)
    daemon = await start_daemon(parse_config(text, str(path), environ={}))
    return PushWorld(daemon, receiver)


@implementer(ILogObserver)
class LogWatcher:
    """Collects formatted log lines; ``wait_for`` fires when one contains a text."""

    def __init__(self) -> None:
        from twisted.logger import globalLogPublisher

        self.lines: list[str] = []
        self._waiters: list[tuple[str, defer.Deferred[None]]] = []
        self._publisher = globalLogPublisher
        self._publisher.addObserver(self)

    def __call__(self, event: dict[str, Any]) -> None:
        from twisted.logger import formatEvent

        line = formatEvent(event)
        self.lines.append(line)
        for needle, d in list(self._waiters):
            if needle in line:
                self._waiters.remove((needle, d))
                d.callback(None)

    async def wait_for(self, needle: str, timeout: float = 10.0) -> None:
        from twisted.internet import reactor

        if any(needle in line for line in self.lines):
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((needle, d))
        d.addTimeout(timeout, reactor)
        try:
            await d
        except defer.TimeoutError:
            raise AssertionError(f"no log line with {needle!r} in {timeout}s") from None

    def close(self) -> None:
        self._publisher.removeObserver(self)
