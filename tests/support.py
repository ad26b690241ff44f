"""Shared helpers for the test suite: free ports, configs, an in-process daemon."""

from __future__ import annotations

import base64
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import treq
from twisted.internet import defer
from twisted.logger import ILogObserver

from jmappushd.auth.passwords import hash_password, new_bearer_token, token_digest
from jmappushd.config import Config, parse_config
from jmappushd.context import App
from jmappushd.daemon.service import JMAPPushService, build_service, prepare_state
from jmappushd.reactor import IDaemonReactor

# A cheap scrypt cost for tests; the format is the production one.
ODD_STATE_MAPS: list[dict[str, dict[str, str]]] = [
    {"A": {"Email": "s"}},
    {},
    {"A": {}},
    {"Aé\u2028": {"Mail\"box": "s\\1\n\x00", "Email": "\U0001f4e7"}},
    {f"A{i}": {"Email": f"s{i}", "Thread": "t"} for i in range(50)},
]
"""``changed`` maps whose encoding a template must reproduce byte for byte: empty maps,
quotes, backslashes, a line separator, NUL, non-ASCII, many accounts."""

TEST_LOG_N = 4

RequestHeaders = dict[str | bytes, str | bytes]
"""A header map as treq takes it. Its ``headers=`` is a union of dict types, so mypy
cannot infer a bare ``{"Name": "value"}`` as one of them: give literals this type."""


def no_threads(f: Any, *args: Any) -> defer.Deferred[Any]:
    """A thread runner for unit tests that must never run blocking work."""
    raise AssertionError(f"unexpected blocking call {f!r}")


def log_into(events: list[Any]) -> ILogObserver:
    """An observer that appends each event to ``events``.

    ``Logger(observer=...)`` is typed for an ``ILogObserver`` provider; any callable
    taking the event works, and a list's ``append`` is the simplest.
    """
    return cast(ILogObserver, events.append)


def _ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections (and to ``bind(0)``)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = random.Random()


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a server a test starts a moment later.

    Chosen below the kernel's ephemeral range: a port ``bind(0)`` returns comes from
    the range client connections take their local ports from, so in the gap before the
    server binds it, any test's outgoing connection could take it ("Address already in
    use"). Falls back to ``bind(0)`` if nothing below is free.
    """
    low = _ephemeral_low()
    for _ in range(64):
        port = _PORTS.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(state_dir: Path, port: int, admin_port: int, extra: str = "") -> str:
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
public-url = http://127.0.0.1:{port}
state-dir = {state_dir}

[admin]
listen = tcp:{admin_port}:interface=127.0.0.1

[push]
allow-private-urls = true
{extra}
"""


def make_config(tmp_path: Path, extra: str = "", sections: Mapping[str, str] | None = None
                ) -> Config:
    """A config on free loopback ports; ``sections`` appends raw INI sections."""
    text = config_text(tmp_path / "state", free_port(), free_port(), extra)
    for name, body in (sections or {}).items():
        text += f"\n[{name}]\n{body}\n"
    path = tmp_path / "jmappushd.ini"
    path.write_text(text)
    return parse_config(text, str(path), environ={})


def basic(user: str, password: str) -> RequestHeaders:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> RequestHeaders:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class LiveDaemon:
    """A daemon running inside the test process on the real reactor."""

    app: App
    service: JMAPPushService
    base: str
    admin: str

    @property
    def config(self) -> Config:
        return self.app.config

    async def add_user(self, name: str, password: str = "secret",
                       account_id: str | None = None) -> str:
        user = await self.app.store.add_user(name, hash_password(password, TEST_LOG_N), account_id)
        return user.primary_account_id

    async def add_token(self, name: str) -> str:
        token = new_bearer_token()
        await self.app.store.create_token(name, token_digest(token))
        return token

    async def publish(self, changed: Mapping[str, Mapping[str, str]]) -> Any:
        body = {"@type": "StateChange", "changed": changed}
        response = await treq.post(
            self.admin + "/publish", json=body,
            headers=bearer(self.app.admin_token),
        )
        assert response.code == 202, (response.code, await response.text())
        return await response.json()

    async def api(self, body: Any, headers: RequestHeaders) -> Any:
        return await treq.post(
            self.base + "/jmap/api/", json=body,
            headers={"Content-Type": "application/json", **headers},
        )


def live_reactor() -> IDaemonReactor:
    """The global reactor as the daemon's wiring takes it.

    Twisted types the global reactor as a few common interfaces; it provides the whole
    union, so the cast here (as in ``tap.py``) is the only one the tests need.
    """
    from twisted.internet import reactor

    return cast(IDaemonReactor, reactor)


async def start_daemon(config: Config) -> LiveDaemon:
    """Build the whole daemon as twistd would, on the running reactor, and wait for ready."""
    prepare_state(config)
    service = build_service(config, live_reactor())
    app = service.app
    service.startService()
    await service.when_ready()
    port = config.server.listen[0].split(":")[1]
    admin_port = config.admin.listen[0].split(":")[1]
    return LiveDaemon(app, service, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")


async def stop_daemon(daemon: LiveDaemon) -> None:
    await daemon.service.stopService()
    # Let the pool's connections close before the next test reuses the reactor.
    await defer.succeed(None)
