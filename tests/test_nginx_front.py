"""The shipped nginx front (etc/nginx/jmappushd.conf) in front of a real daemon.

Real nginx (Debian's, as ``.ci/run`` installs it) runs on 127.0.0.1 as a non-root-friendly
single process (pid, temporary files and logs in a tmp dir) with the shipped file, only its
ports, paths, certificate and upstream replaced, and a certificate the test makes. The daemon
is ``twistd jmappushd`` with ``trusted-proxies = 127.0.0.1``. Clients connect from
127.0.0.2, so the address the daemon logs shows whether it came through X-Forwarded-For.
Skipped where nginx (or, for HTTP/2, curl) is missing, except under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from treq.client import HTTPClient
from twisted.internet import ssl, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from tests.daemon_process import DaemonProcess
from tests.support import basic, bearer, free_port
from tests.test_eventsource_live import SSEClient
from tests.test_websocket_helpers import Client, basic_header, self_signed

SHIPPED = Path(__file__).resolve().parent.parent / "etc" / "nginx" / "jmappushd.conf"
CLIENT_ADDRESS = "127.0.0.2"
TIMEOUT = 10.0


def _program(name: str, *fallbacks: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((p for p in fallbacks if os.access(p, os.X_OK)), None)


def need(name: str, *fallbacks: str) -> str:
    """The program's path; skip without it, but fail under CI=true (.ci/run installs it)."""
    path = _program(name, *fallbacks)
    if path is None:
        reason = f"{name} is not installed (Debian: apt-get install {name}-light)" \
            if name == "nginx" else f"{name} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return path


# -- the shipped file, with the site-specific values replaced ------------------------------


def front_config(directory: Path, https_port: int, http_port: int, upstream_port: int,
                 key: Path, cert: Path) -> str:
    """The shipped file with exactly its marked values replaced, each found exactly once on
    a directive line (comments are left alone), so a reshaped file fails here loudly."""
    replacements = {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream_port};",
        "/etc/letsencrypt/live/jmap.example.com/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/jmap.example.com/privkey.pem": str(key),
    }
    expected = dict.fromkeys(replacements, 1)
    access_log = "/var/log/nginx/jmappushd.access.log"
    replacements[access_log] = str(directory / "access.log")
    expected[access_log] = 2  # the HTTPS server and the redirect
    found = dict.fromkeys(replacements, 0)
    lines = []
    for line in SHIPPED.read_text().splitlines():
        if not line.lstrip().startswith("#"):
            for old, new in replacements.items():
                if old in line:
                    found[old] += line.count(old)
                    line = line.replace(old, new)
        lines.append(line)
    assert found == expected, f"the shipped file changed shape: {found}"
    return "\n".join(lines) + "\n"


def main_config(directory: Path, site: Path) -> str:
    """The nginx.conf around the shipped file: everything nginx writes stays in ``directory``
    (one process, no user switch, so it runs the same as root and as anyone else)."""
    tmp = directory / "tmp"
    tmp.mkdir()
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp / kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{
    worker_connections 256;
}}
http {{
{temp_paths}
    access_log {directory / "default-access.log"};
    include {site};
}}
"""


@dataclass
class Front:
    """nginx and the daemon behind it, and what the clients need to reach them."""

    daemon: DaemonProcess
    nginx_dir: Path
    https_port: int
    http_port: int
    cert_pem: bytes
    cert_path: Path
    admin_token: str
    alice_token: str

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def nginx_log(self) -> str:
        path = self.nginx_dir / "access.log"
        return path.read_text() if path.exists() else ""

    def nginx_errors(self) -> str:
        path = self.nginx_dir / "error.log"
        return path.read_text() if path.exists() else ""


def _wait_listening(port: int, process: subprocess.Popen[bytes], errors: Path) -> None:
    """Poll until nginx accepts connections (or fail with its error log)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited: {errors.read_text() if errors.exists() else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("nginx did not start listening")


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    nginx = need("nginx", "/usr/sbin/nginx")
    root = tmp_path_factory.mktemp("front")
    https_port, http_port = free_port(), free_port()
    daemon = DaemonProcess(root, sections={"event-source": "event-source-throttle = 0",
                                           "websocket": "ws-throttle = 0"})
    # Behind the front: its URL in the session, its address trusted, its connections
    # not counted as one client's.
    text = daemon.config_path.read_text().replace(
        f"public-url = http://127.0.0.1:{daemon.port}",
        f"public-url = https://127.0.0.1:{https_port}\ntrusted-proxies = 127.0.0.1\n"
        "max-connections-per-address = 0")
    assert "trusted-proxies" in text
    daemon.config_path.write_text(text)
    daemon.ctl("user", "add", "alice", "--password-stdin", "--account-id", "acc1",
               stdin="pw\n")
    alice_token = daemon.ctl("token", "create", "alice").stdout.strip()
    nginx_dir = root / "nginx"
    nginx_dir.mkdir()
    key, cert, pem = self_signed(nginx_dir)
    site = nginx_dir / "jmappushd.conf"
    site.write_text(front_config(nginx_dir, https_port, http_port, daemon.port, key, cert))
    conf = nginx_dir / "nginx.conf"
    conf.write_text(main_config(nginx_dir, site))
    daemon.start()
    process = subprocess.Popen([nginx, "-p", str(nginx_dir), "-c", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(https_port, process, nginx_dir / "error.log")
        token = (root / "state" / "admin.token").read_text().strip()
        yield Front(daemon, nginx_dir, https_port, http_port, pem, cert, token, alice_token)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        daemon.stop()


# -- clients from 127.0.0.2 --------------------------------------------------------------------


def client_endpoint(front: Front, host: str, port: int, tls: bool) -> IStreamClientEndpoint:
    """A connection from 127.0.0.2 (over TLS trusting the front's certificate)."""
    from twisted.internet import reactor

    tcp = TCP4ClientEndpoint(reactor, host, port, timeout=TIMEOUT,
                             bindAddress=(CLIENT_ADDRESS, 0))
    if not tls:
        return tcp
    trust = ssl.Certificate.loadPEM(front.cert_pem)
    return wrapClientTLS(ssl.optionsForClientTLS(host, trustRoot=trust), tcp)


@implementer(IAgentEndpointFactory)
class FromClientAddress:
    """treq's connections, each from 127.0.0.2."""

    def __init__(self, front: Front) -> None:
        self._front = front

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return client_endpoint(self._front, uri.host.decode(), uri.port, uri.scheme == b"https")


def http_client(front: Front) -> HTTPClient:
    from twisted.internet import reactor

    return HTTPClient(Agent.usingEndpointFactory(reactor, FromClientAddress(front)))


async def wait_until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` (files written by other processes) until it holds, or fail."""
    from twisted.internet import reactor, task

    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


async def publish(front: Front, changed: dict[str, dict[str, str]]) -> None:
    """POST /publish on the admin listener directly (it is not behind the front)."""
    response = await treq.post(front.daemon.admin + "/publish", headers=bearer(front.admin_token),
                               json={"@type": "StateChange", "changed": changed})
    assert response.code == 202, await response.text()


async def daemon_log_line(front: Front, *parts: str) -> str:
    """The first access-log line of the daemon with every part (its log is written by a
    thread draining twistd's output, so it is polled)."""

    def found() -> list[str]:
        return [line for line in front.daemon.log().splitlines()
                if "[jmappushd.access#info]" in line and all(p in line for p in parts)]

    await wait_until(lambda: bool(found()), f"an access-log line with {parts}")
    return found()[0]


def curl(front: Front, path: str, *args: str) -> tuple[str, int, str]:
    """One HTTP/2 request with curl from 127.0.0.2: (HTTP version, status, body)."""
    program = need("curl")
    out = subprocess.run(
        [program, "--http2", "--silent", "--show-error", "--cacert", str(front.cert_path),
         "--interface", CLIENT_ADDRESS, "--max-time", str(TIMEOUT),
         "--write-out", "\n%{http_version} %{http_code}", *args, front.base + path],
        capture_output=True, text=True, timeout=TIMEOUT * 2, check=True)
    body, _, tail = out.stdout.rpartition("\n")
    version, code = tail.split()
    return version, int(code), body


# -- the checks -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_and_api_over_http2(front: Front) -> None:
    """SES-4, API-1 through the front over HTTP/2: the session advertises the front's
    https/wss URLs; an API call answers; the daemon logs 127.0.0.2, the address nginx saw,
    not the X-Forwarded-For the client made up."""
    version, code, body = await threads.deferToThread(
        curl, front, "/jmap/session", "--user", "alice:pw", "--header", "X-Forwarded-For: 6.6.6.6")
    assert (version, code) == ("2", 200), body
    session = json.loads(body)
    assert session["apiUrl"] == front.base + "/jmap/api/"
    ws = session["capabilities"]["urn:ietf:params:jmap:websocket"]
    assert ws["url"] == f"wss://127.0.0.1:{front.https_port}/jmap/ws"
    request = {"using": ["urn:ietf:params:jmap:core"],
               "methodCalls": [["Core/echo", {"hello": "front"}, "c1"]]}
    version, code, body = await threads.deferToThread(
        curl, front, "/jmap/api/", "--user", "alice:pw", "--header",
        "Content-Type: application/json", "--data-binary", json.dumps(request))
    assert (version, code) == ("2", 200), body
    assert json.loads(body)["methodResponses"] == [["Core/echo", {"hello": "front"}, "c1"]]
    line = await daemon_log_line(front, "GET /jmap/session 200")
    assert f" {CLIENT_ADDRESS} GET" in line and "6.6.6.6" not in line
    await daemon_log_line(front, f"{CLIENT_ADDRESS} POST /jmap/api/ 200")


@pytest_twisted.ensureDeferred
async def test_well_known_redirect_and_http_redirect(front: Front) -> None:
    """SES-2: /.well-known/jmap reaches the daemon's redirect to the session; plain http
    on the front redirects to https."""
    client = http_client(front)
    response = await client.get(front.base + "/.well-known/jmap", allow_redirects=False,
                                headers=basic("alice", "pw"))
    assert response.code in (301, 302, 307, 308)
    assert response.headers.getRawHeaders("Location") == [front.base + "/jmap/session"]
    await response.content()
    plain = f"http://127.0.0.1:{front.http_port}/jmap/session"
    response = await client.get(plain, allow_redirects=False)
    assert response.code == 301
    (location,) = response.headers.getRawHeaders("Location")
    assert location.startswith("https://127.0.0.1") and location.endswith("/jmap/session")
    await response.content()


@pytest_twisted.ensureDeferred
async def test_admin_listener_is_not_exposed(front: Front) -> None:
    """Nothing on the front reaches the admin listener (publish, health, metrics), nor any
    path outside the JMAP ones."""
    client = http_client(front)
    for method, path in (("POST", "/publish"), ("GET", "/health"), ("GET", "/metrics"),
                         ("GET", "/vapid/rotate"), ("GET", "/")):
        response = await client.request(method, front.base + path,
                                        headers=bearer(front.admin_token))
        assert response.code == 404, (method, path)
        await response.content()


@pytest_twisted.ensureDeferred
async def test_eventsource_event_arrives_without_buffering_delay(front: Front) -> None:
    """ES-1, ES-8 through the front: a change published while the stream is open arrives
    within a second (nginx does not buffer it); the access_token in the query string is in
    neither nginx's log nor the daemon's; the client closing the stream leaves one daemon
    line with the client's address and closed=client."""
    token = front.alice_token
    url = front.base + "/jmap/eventsource/?types=*&closeafter=no&ping=0&access_token=" + token
    response = await http_client(front).get(url, unbuffered=True)
    assert response.code == 200
    assert response.headers.getRawHeaders("Content-Type") == ["text/event-stream"]
    stream = SSEClient(response)
    published = time.monotonic()
    await publish(front, {"acc1": {"Email": "e1"}})
    changed, event_id = await stream.next_state()
    assert time.monotonic() - published < 1.0
    assert changed == {"acc1": {"Email": "e1"}} and event_id
    stream.close()
    line = await daemon_log_line(front, "/jmap/eventsource/", "closed=")
    assert f" {CLIENT_ADDRESS} GET /jmap/eventsource/ 200 " in line
    assert line.endswith("closed=client")
    assert token not in line and "access_token" not in line
    await wait_until(lambda: "/jmap/eventsource/" in front.nginx_log(), "nginx's log line")
    assert token not in front.nginx_log()
    assert f"{CLIENT_ADDRESS} [" in front.nginx_log()


@pytest_twisted.ensureDeferred
async def test_websocket_with_push(front: Front) -> None:
    """WS-5, WS-18 through the front (RFC 8887 over the Upgrade nginx passes): the jmap
    subprotocol is selected, WebSocketPushEnable then a publish gives a StateChange; when
    the client closes, the daemon logs one line from 127.0.0.2 with closed=client."""
    from twisted.internet import reactor

    url = f"wss://127.0.0.1:{front.https_port}/jmap/ws"
    factory = WebSocketClientFactory(url, protocols=["jmap"], headers=basic_header("alice", "pw"),
                                     reactor=reactor)
    factory.protocol = Client
    endpoint = client_endpoint(front, "127.0.0.1", front.https_port, tls=True)
    client = await endpoint.connect(factory)
    assert isinstance(client, Client)
    await client.opened.addTimeout(TIMEOUT, reactor)
    assert client.selected == "jmap"
    client.send({"@type": "WebSocketPushEnable", "dataTypes": None})
    client.send({"@type": "Request", "id": "sync", "using": ["urn:ietf:params:jmap:core"],
                 "methodCalls": [["Core/echo", {}, "c"]]})
    assert (await client.next())["requestId"] == "sync"
    await publish(front, {"acc1": {"Mailbox": "m7"}})
    change = await client.next()
    assert change["@type"] == "StateChange"
    assert change["changed"] == {"acc1": {"Mailbox": "m7"}}
    await client.bye()
    line = await daemon_log_line(front, "/jmap/ws", "closed=")
    assert f" {CLIENT_ADDRESS} GET /jmap/ws 101 " in line and line.endswith("closed=client")
