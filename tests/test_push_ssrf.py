"""SSRF protection for push URLs (PS-18, C-PS-3): create-time and connect-time checks."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import address as taddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorSSL,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer
from zope.interface.verify import verifyObject

from jmappushd.transports.webpush.sender import AgentTransport
from jmappushd.transports.webpush.ssrf import (
    ForbiddenAddress,
    GuardedEndpointFactory,
    check_push_url,
    is_public_address,
)

REFUSED = [
    "127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.255.255", "172.16.0.1",
    "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1", "100.127.255.255",
    "0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "192.0.0.8", "192.0.2.1", "198.51.100.7", "203.0.113.9", "198.18.0.1", "192.88.99.1",
    "::1", "::", "fc00::1", "fd12:3456:789a::1", "fe80::1", "febf::1", "fec0::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
    "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::1", "2002:7f00:1::1", "2002:c0a8:101::1",
    "2001::1", "2001:db8::1", "100::1", "3fff::1", "fe80::1%eth0",
]
PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "172.15.255.255", "172.32.0.1", "100.63.255.255",
    "100.128.0.1", "11.0.0.1", "223.255.255.254", "2606:4700:4700::1111", "2a00:1450:4001::1",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
]


@pytest.mark.parametrize("text", REFUSED)
def test_non_public_addresses_refused(text: str) -> None:
    """PS-18: loopback, private, link-local, CGNAT, multicast, reserved, documentation and
    v4-embedding v6 forms of them are not public."""
    assert not is_public_address(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_accepted(text: str) -> None:
    """PS-18: globally routable v4/v6 (and v6 embedding a public v4) are public."""
    assert is_public_address(ipaddress.ip_address(text))


# --- create-time check --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://push.example.net/x", "ftp://push.example.net/", "/relative", "push.example.net/x",
     "https:push.example.net", "HTTP://push.example.net/"],
)
def test_check_push_url_requires_https(url: str) -> None:
    """PS-1/WP-10: anything but an absolute https URL fails with 'must be https'."""
    with pytest.raises(ValueError, match="must be https"):
        check_push_url(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://user:pw@push.example.net/", "userinfo"),
        ("https://user@push.example.net/", "userinfo"),
        ("https:///path", "no host"),
        ("https://push.example.net:99999/", "port"),
        ("https://push.example.net:x/", "port"),
        ("https://push.example.net/a b", "whitespace"),
        ("https://push.example.net/\x00", "control"),
        ("https://[::1/", "IPv6"),
        ("https://[fe80::1%25eth0]/", "zone identifier"),
        ("https://[2606:4700::1%25eth0]/", "zone identifier"),
    ],
)
def test_check_push_url_rejects_malformed(url: str, message: str) -> None:
    """C-PS-3: userinfo, a missing host, a bad port or control characters are refused."""
    with pytest.raises(ValueError, match=message):
        check_push_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/p", "https://10.0.0.1:8443/p", "https://[::1]/p", "https://[fc00::1]/",
     "https://169.254.169.254/latest/meta-data", "https://[::ffff:127.0.0.1]/",
     "https://127.1/", "https://2130706433/", "https://0x7f.1/", "https://localhost/",
     "https://LOCALHOST:8443/", "https://push.localhost/", "https://localhost./"],
)
def test_check_push_url_refuses_private_literals_and_localhost(url: str) -> None:
    """PS-18/C-PS-3: non-public IP literals (incl. legacy numeric forms) and localhost names
    are refused with ForbiddenAddress, and accepted when private targets are allowed."""
    with pytest.raises(ForbiddenAddress):
        check_push_url(url, allow_private=False)
    check_push_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    ["https://push.example.net/p/abc?x=1", "https://8.8.8.8/p", "https://[2606:4700::1]:8443/",
     "https://fcm.googleapis.com/fcm/send/abc", "https://localhost.example.com/",
     "https://10.example.com/"],
)
def test_check_push_url_accepts_public(url: str) -> None:
    """Public IP literals and ordinary host names pass the create-time check."""
    check_push_url(url, allow_private=False)


def test_forbidden_address_is_not_a_value_error() -> None:
    """C-PS-3: callers map ForbiddenAddress to 'forbidden', distinct from ValueError."""
    assert not issubclass(ForbiddenAddress, ValueError)


# --- connect-time check -------------------------------------------------------------------


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers from a table; with ``hold=True`` completion waits for ``finish()``."""

    def __init__(self, table: dict[str, Sequence[str]], hold: bool = False) -> None:
        self.table = table
        self.hold = hold
        self.queries: list[tuple[str, int]] = []
        self.pending: list[tuple[IResolutionReceiver, str, int]] = []

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str,
                        portNumber: int = 0,
                        addressTypes: Sequence[type[IAddress]] | None = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        self.queries.append((hostName, portNumber))
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if self.hold:
            self.pending.append((resolutionReceiver, hostName, portNumber))
        else:
            self._answer(resolutionReceiver, hostName, portNumber)
        return resolution

    def finish(self) -> None:
        for receiver, name, port in self.pending:
            self._answer(receiver, name, port)

    def _answer(self, receiver: IResolutionReceiver, name: str, port: int) -> None:
        for ip in self.table.get(name, ()):
            cls = taddress.IPv6Address if ":" in ip else taddress.IPv4Address
            receiver.addressResolved(cls("TCP", ip, port))
        receiver.resolutionComplete()


@implementer(IPolicyForHTTPS)
class RecordingPolicy:
    """A TLS policy that records which netloc it was asked for."""

    def __init__(self) -> None:
        self.netlocs: list[tuple[bytes, int]] = []

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet.ssl import optionsForClientTLS

        self.netlocs.append((hostname, port))
        return optionsForClientTLS(hostname.decode("ascii"))


def make_factory(table: dict[str, Sequence[str]], allow_private: bool = False, **kwargs: Any
                 ) -> tuple[GuardedEndpointFactory, MemoryReactorClock, FakeResolver]:
    reactor = MemoryReactorClock()
    resolver = FakeResolver(table, hold=kwargs.pop("hold", False))
    reactor.installNameResolver(resolver)
    return GuardedEndpointFactory(reactor, allow_private, **kwargs), reactor, resolver


def connect(factory: GuardedEndpointFactory, url: bytes) -> Deferred[Any]:
    endpoint = factory.endpointForURI(URI.fromBytes(url))
    return endpoint.connect(Factory.forProtocol(Protocol))


def is_tls(client_factory: Any) -> bool:
    """MemoryReactor records the endpoint's wrapping factory; look one level inside."""
    return isinstance(client_factory._wrappedFactory, TLSMemoryBIOFactory)


def failure_of(d: Deferred[Any]) -> Failure:
    results: list[Failure] = []
    d.addErrback(results.append)
    assert results, "Deferred has not failed"
    return results[0]


def test_provides_interfaces() -> None:
    """The factory is an IAgentEndpointFactory and yields IStreamClientEndpoints."""
    factory, _reactor, _resolver = make_factory({})
    verifyObject(IAgentEndpointFactory, factory)
    verifyObject(IStreamClientEndpoint,
                 factory.endpointForURI(URI.fromBytes(b"https://push.example.net/")))


@pytest.mark.parametrize(
    "answers",
    [["127.0.0.1"], ["10.0.0.1"], ["::1"], ["8.8.8.8", "10.0.0.1"], ["2606:4700::1", "fd00::1"],
     ["::ffff:192.168.0.1"]],
)
def test_name_resolving_to_private_address_is_refused(answers: list[str]) -> None:
    """PS-18 (DNS rebinding): if ANY answer is non-public the connection fails with
    ForbiddenAddress and no TCP connection is attempted."""
    factory, reactor, _resolver = make_factory({"push.example.net": answers})
    failure = failure_of(connect(factory, b"https://push.example.net/p"))
    assert failure.check(ForbiddenAddress)
    assert reactor.tcpClients == []


def test_public_answer_connects_to_checked_ip_with_tls_for_hostname() -> None:
    """PS-18: the TCP connection goes to the resolved, checked IP (no re-resolution), TLS-wrapped
    with the original hostname for SNI and verification, using the configured timeout."""
    policy = RecordingPolicy()
    factory, reactor, resolver = make_factory(
        {"push.example.net": ["93.184.216.34"]}, tls_policy=policy, connect_timeout=7)
    d = connect(factory, b"https://push.example.net:8443/p")
    assert resolver.queries == [("push.example.net", 8443)]
    host, port, client_factory, timeout, _bind = reactor.tcpClients[0]
    assert (host, port, timeout) == ("93.184.216.34", 8443, 7)
    assert policy.netlocs == [(b"push.example.net", 8443)]
    assert is_tls(client_factory)
    assert not d.called


def test_default_policy_wraps_tls() -> None:
    """Without a tls_policy the browser-like (verifying) policy still wraps https in TLS."""
    factory, reactor, _resolver = make_factory({"push.example.net": ["8.8.4.4"]})
    connect(factory, b"https://push.example.net/p")
    assert is_tls(reactor.tcpClients[0][2])


def test_ipv6_answer_connects_to_ipv6() -> None:
    """A public IPv6 answer is connected to as IPv6."""
    factory, reactor, _resolver = make_factory({"push.example.net": ["2606:4700::6810:84e5"]})
    connect(factory, b"https://push.example.net/")
    assert reactor.tcpClients[0][:2] == ("2606:4700::6810:84e5", 443)


def test_allow_private_lifts_the_check() -> None:
    """C-PS-3 test mode: with allow_private a loopback answer is connected to."""
    factory, reactor, _resolver = make_factory({"localhost": ["127.0.0.1"]}, allow_private=True)
    connect(factory, b"https://localhost:4443/")
    assert reactor.tcpClients[0][:2] == ("127.0.0.1", 4443)


def test_ip_literals_are_checked_without_resolving() -> None:
    """An IP-literal URI is judged directly: private refused, public connected, no DNS query."""
    factory, reactor, resolver = make_factory({})
    assert failure_of(connect(factory, b"https://[::1]:8443/")).check(ForbiddenAddress)
    assert failure_of(connect(factory, b"https://127.0.0.1/")).check(ForbiddenAddress)
    connect(factory, b"https://[2606:4700::1]:8443/")
    connect(factory, b"http://8.8.8.8/")
    assert [c[:2] for c in reactor.tcpClients] == [("2606:4700::1", 8443), ("8.8.8.8", 80)]
    assert is_tls(reactor.tcpClients[0][2])
    assert not is_tls(reactor.tcpClients[1][2])
    assert resolver.queries == []


def test_empty_resolution_is_dns_error() -> None:
    """A name without addresses fails with DNSLookupError."""
    factory, _reactor, _resolver = make_factory({})
    assert failure_of(connect(factory, b"https://nowhere.example/")).check(DNSLookupError)


def test_falls_back_to_next_checked_address_on_connect_failure() -> None:
    """When the first checked address refuses, the next one is tried; success fires."""
    factory, reactor, _resolver = make_factory(
        {"push.example.net": ["2606:4700::1", "93.184.216.34"]})
    d = connect(factory, b"http://push.example.net/")
    reactor.tcpClients[0][2].clientConnectionFailed(
        reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert reactor.tcpClients[1][:2] == ("93.184.216.34", 80)
    protocol = reactor.tcpClients[1][2].buildProtocol(None)
    assert protocol is not None
    protocol.makeConnection(StringTransport())
    results: list[Any] = []
    d.addCallback(results.append)
    assert len(results) == 1 and isinstance(results[0], Protocol)


def test_all_addresses_failing_reports_connect_error() -> None:
    """If every checked address fails, the last connection error is reported."""
    factory, reactor, _resolver = make_factory({"push.example.net": ["8.8.8.8"]})
    d = connect(factory, b"http://push.example.net/")
    reactor.tcpClients[0][2].clientConnectionFailed(
        reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert failure_of(d).check(ConnectionRefusedError)


def test_cancel_during_resolution() -> None:
    """Cancelling while DNS is pending fails with CancelledError and a late answer is ignored."""
    factory, reactor, resolver = make_factory({"push.example.net": ["8.8.8.8"]}, hold=True)
    d = connect(factory, b"https://push.example.net/")
    d.cancel()
    assert failure_of(d).check(CancelledError)
    resolver.finish()
    assert reactor.tcpClients == []


def test_agent_request_to_rebinding_host_fails() -> None:
    """Used through Agent.usingEndpointFactory, a request to a private-resolving name fails
    with ForbiddenAddress before any connection."""
    factory, reactor, _resolver = make_factory({"evil.example": ["169.254.169.254"]})
    agent = Agent.usingEndpointFactory(reactor, factory, pool=HTTPConnectionPool(reactor))
    failure = failure_of(agent.request(b"POST", b"https://evil.example/push"))
    assert failure.check(ForbiddenAddress)
    assert reactor.tcpClients == []


def test_a_planned_post_is_checked_at_every_new_connection() -> None:
    """PS-18 with the agent plan (one endpoint kept per URL): a name that rebinds to a
    private address after the first POST is resolved again and refused at the next
    connection; nothing connects to it."""
    factory, reactor, resolver = make_factory({"push.example": ["93.184.216.34"]})
    agent = Agent.usingEndpointFactory(reactor, factory,
                                       pool=HTTPConnectionPool(reactor, persistent=False))
    post = AgentTransport(agent, reactor, 10.0)
    first = post.post("https://push.example/p", b"body", {"TTL": "60"})
    assert [host for host, *_ in reactor.tcpClients] == ["93.184.216.34"]
    resolver.table["push.example"] = ["10.0.0.7"]
    second = post.post("https://push.example/p", b"body", {"TTL": "60"})
    assert len(post._plans) == 1  # the kept plan was used
    assert failure_of(second).check(ForbiddenAddress)
    assert resolver.queries == [("push.example", 443)] * 2
    assert len(reactor.tcpClients) == 1
    first.cancel()
    failure_of(first)


def test_unsupported_scheme_and_bad_attempts_refused() -> None:
    """Only http(s) URIs are served, and max_attempts must be positive."""
    factory, reactor, _resolver = make_factory({})
    with pytest.raises(ValueError, match="scheme"):
        factory.endpointForURI(URI.fromBytes(b"ftp://push.example.net/"))
    with pytest.raises(ValueError):
        GuardedEndpointFactory(reactor, False, max_attempts=0)


# --- end to end over loopback TLS ---------------------------------------------------------


def _self_signed(name: str) -> tuple[bytes, bytes]:
    """A throwaway P-256 certificate for ``name`` and its key, PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest_twisted.inlineCallbacks
def test_real_tls_uses_original_hostname_for_verification() -> Any:
    """PS-18: connecting to the checked IP still verifies the certificate against the URL's
    hostname (push.test → 127.0.0.1 here), and a certificate for another name is rejected."""
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, PrivateCertificate
    from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseNeverReceived, readBody
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    class Ok(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            return b"ok"

    root = Ok()
    cert_pem, key_pem = _self_signed("push.test")
    server_cert = PrivateCertificate.loadPEM(cert_pem + key_pem)
    port = IReactorSSL(reactor).listenSSL(0, Site(root), server_cert.options(),
                                          interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        host = port.getHost()
        assert isinstance(host, taddress.IPv4Address)
        number = host.port
        for trusted_name, ok in (("push.test", True), ("other.test", False)):
            trust = Certificate.loadPEM(cert_pem if ok else _self_signed(trusted_name)[0])
            factory = GuardedEndpointFactory(
                reactor, allow_private=True, resolver=FakeResolver({"push.test": ["127.0.0.1"]}),
                tls_policy=BrowserLikePolicyForHTTPS(trustRoot=trust))
            agent = Agent.usingEndpointFactory(reactor, factory, pool=pool)
            d = agent.request(b"GET", f"https://push.test:{number}/p".encode())
            if ok:
                response = yield d
                assert (yield readBody(response)) == b"ok"
            else:
                with pytest.raises(ResponseNeverReceived) as info:
                    yield d
                assert "certificate verify failed" in str(info.value.reasons[0].value)
    finally:
        yield pool.closeCachedConnections()
        yield port.stopListening()
