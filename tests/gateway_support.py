"""Helpers shared by the gateway end-to-end tests: a provisioned Cyrus, a gateway daemon.

``cyrus_with_users`` gives the private Cyrus (tests/cyrus_server.py) with users alice and
bob and a reader granted ``lr`` on both; each test module wraps it in its own module-scoped
fixture. ``gateway`` runs the daemon in this process in front of it, with push throttles
off so that timing assertions measure the gateway, not the throttle.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import treq

from tests.cyrus_server import CyrusServer, running_cyrus
from tests.support import LiveDaemon, basic, make_config, start_daemon, stop_daemon

MAIL = "urn:ietf:params:jmap:mail"
WEBSOCKET = "urn:ietf:params:jmap:websocket"
THROTTLE_MS = 0


def cyrus_with_users() -> Iterator[CyrusServer]:
    """A running Cyrus with alice, bob and the reader (``lr`` on both); cleaned up after."""
    yield from running_cyrus(("alice", "bob", "reader"), (("alice", "reader"), ("bob", "reader")))


def reader_secret(tmp_path: Path, password: str = "reader-pw") -> Path:
    """The reader's password file, mode 0600 as the daemon demands."""
    secret = tmp_path / "reader.pw"
    secret.write_text(password + "\n")
    os.chmod(secret, 0o600)
    return secret


def gateway_sections(cyrus: CyrusServer, tmp_path: Path, changes: str = "cyrus-notify",
                     extra: str = "") -> dict[str, str]:
    """The INI sections of a gateway in front of ``cyrus``."""
    secret = reader_secret(tmp_path)
    upstream = (f"session-url = {cyrus.session_url}\nchanges = {changes}\n"
                f"reader-user = reader\nreader-password-file = {secret}\ndebounce = 50\n")
    if changes == "cyrus-notify":
        upstream += f"notify-socket = {cyrus.notify_socket}\n"
    return {"upstream": upstream + extra,
            "event-source": f"event-source-throttle = {THROTTLE_MS}",
            "websocket": f"ws-throttle = {THROTTLE_MS}"}


@asynccontextmanager
async def gateway(cyrus: CyrusServer, tmp_path: Path, changes: str = "cyrus-notify",
                  extra: str = "", more: Mapping[str, str] | None = None,
                  push: str = "") -> AsyncIterator[LiveDaemon]:
    """A gateway daemon in this process; ``more`` adds sections, ``push`` adds keys to
    ``[push]``."""
    sections = gateway_sections(cyrus, tmp_path, changes, extra)
    for name, body in (more or {}).items():
        sections[name] = sections[name] + "\n" + body if name in sections else body
    config = make_config(tmp_path, push, sections=sections)
    daemon = await start_daemon(config)
    try:
        yield daemon
    finally:
        await stop_daemon(daemon)


async def get_json(url: str, user: str, password: str) -> tuple[int, Any, Any]:
    """GET with Basic credentials: status, headers and the body (parsed when JSON)."""
    response = await treq.get(url, headers=basic(user, password), persistent=False)
    body = await response.content()
    kind = (response.headers.getRawHeaders("content-type") or [""])[0]
    return response.code, response.headers, json.loads(body) if "json" in kind else body


async def api(d: LiveDaemon, user: str, calls: list[Any], using: list[str] | None = None
              ) -> tuple[int, Any]:
    """POST one Request to the gateway's API as ``user`` (password ``<user>-pw``)."""
    body = {"using": using or ["urn:ietf:params:jmap:core", MAIL], "methodCalls": calls}
    response = await treq.post(d.base + "/jmap/api/", json=body,
                               headers={**basic(user, f"{user}-pw"),
                                        "Content-Type": "application/json"},
                               persistent=False)
    return response.code, await response.json()
