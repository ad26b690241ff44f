"""Gateway mode in front of a real Cyrus IMAP 3.6: the session, logins, and push of real states.

One private Cyrus (tests/cyrus_server.py) with users alice and bob and a reader granted
``lr`` on both; the daemon runs in this process with ``[upstream] changes = cyrus-notify``,
binding the socket Cyrus's imapd.conf names. Mail is delivered with Cyrus's own
``deliver``; what the clients receive is compared with what Cyrus's ``Email/get`` says.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from jmappushd.gateway.auth import SHADOW_PREFIX
from tests.cyrus_server import CyrusServer, require_cyrus
from tests.support import LiveDaemon, basic, make_config, start_daemon, stop_daemon
from tests.test_eventsource_live import es_url, open_stream
from tests.test_websocket_helpers import basic_header, connect

MAIL = "urn:ietf:params:jmap:mail"
WEBSOCKET = "urn:ietf:params:jmap:websocket"
THROTTLE_MS = 0


@pytest.fixture(scope="module")
def cyrus() -> Iterator[CyrusServer]:
    require_cyrus()
    server = CyrusServer()
    try:
        server.start()
        for name in ("alice", "bob", "reader"):
            server.add_user(name, f"{name}-pw")
        server.grant("alice", "reader", "lr")
        server.grant("bob", "reader", "lr")
        yield server
    finally:
        server.cleanup()


def gateway_sections(cyrus: CyrusServer, tmp_path: Path, changes: str = "cyrus-notify",
                     extra: str = "") -> dict[str, str]:
    secret = tmp_path / "reader.pw"
    secret.write_text("reader-pw\n")
    os.chmod(secret, 0o600)
    upstream = (f"session-url = {cyrus.session_url}\nchanges = {changes}\n"
                f"reader-user = reader\nreader-password-file = {secret}\ndebounce = 50\n")
    if changes == "cyrus-notify":
        upstream += f"notify-socket = {cyrus.notify_socket}\n"
    return {"upstream": upstream + extra,
            "event-source": f"event-source-throttle = {THROTTLE_MS}",
            "websocket": f"ws-throttle = {THROTTLE_MS}"}


@asynccontextmanager
async def gateway(cyrus: CyrusServer, tmp_path: Path, changes: str = "cyrus-notify",
                  extra: str = "") -> AsyncIterator[LiveDaemon]:
    config = make_config(tmp_path, sections=gateway_sections(cyrus, tmp_path, changes, extra))
    daemon = await start_daemon(config)
    try:
        yield daemon
    finally:
        await stop_daemon(daemon)


async def get_json(url: str, user: str, password: str) -> tuple[int, Any, Any]:
    response = await treq.get(url, headers=basic(user, password), persistent=False)
    body = await response.content()
    kind = (response.headers.getRawHeaders("content-type") or [""])[0]
    return response.code, response.headers, json.loads(body) if "json" in kind else body


@pytest_twisted.ensureDeferred
async def test_merged_session(cyrus: CyrusServer, tmp_path: Path) -> None:
    """Upstream accounts and primaryAccounts, the daemon's API, EventSource and WebSocket."""
    async with gateway(cyrus, tmp_path) as d:
        code, _, session = await get_json(d.base + "/jmap/session", "alice", "alice-pw")
        assert code == 200
        upstream = cyrus.session("alice")
        assert session["username"] == "alice"
        assert session["accounts"] == upstream["accounts"]
        assert session["primaryAccounts"][MAIL] == "alice"
        assert session["apiUrl"] == d.base + "/jmap/api/"
        assert session["eventSourceUrl"].startswith(d.base + "/jmap/eventsource/")
        assert session["capabilities"][WEBSOCKET]["supportsPush"] is True
        assert session["downloadUrl"].startswith(cyrus.base + "/jmap/download/")
        assert MAIL in session["capabilities"]
        # The daemon keeps a shadow user for alice's push subscriptions, with no password.
        user = await d.app.store.get_user(SHADOW_PREFIX + "alice")
        assert user is not None and user.primary_account_id == "alice"


@pytest_twisted.ensureDeferred
async def test_wrong_password_gets_the_upstream_401(cyrus: CyrusServer, tmp_path: Path) -> None:
    async with gateway(cyrus, tmp_path) as d:
        code, headers, _ = await get_json(d.base + "/jmap/session", "alice", "wrong")
        assert code == 401
        challenges = headers.getRawHeaders("www-authenticate")
        _, direct, _ = await get_json(cyrus.session_url, "alice", "wrong")
        assert challenges == direct.getRawHeaders("www-authenticate")


@pytest_twisted.ensureDeferred
async def test_a_delivery_reaches_eventsource_and_websocket_with_cyrus_states(
        cyrus: CyrusServer, tmp_path: Path) -> None:
    """Within a second: the Email state pushed is the one Cyrus's Email/get then returns,
    and bob's streams hear nothing of alice's mail."""
    async with gateway(cyrus, tmp_path) as d:
        alice_es = await open_stream(es_url(d.base), basic("alice", "alice-pw"))
        bob_es = await open_stream(es_url(d.base), basic("bob", "bob-pw"))
        ws = await connect(d.base, basic_header("alice", "alice-pw"))
        ws.send({"@type": "WebSocketPushEnable", "dataTypes": None})
        await ws.nothing(0.2)
        try:
            cyrus.deliver("alice", "through the gateway")
            changed, _ = await alice_es.next_state(timeout=2)
            truth = cyrus.states("alice", "alice")
            assert changed["alice"]["Email"] == truth["Email"]
            push = await ws.next(timeout=2)
            assert push["@type"] == "StateChange"
            assert push["changed"]["alice"]["Email"] == truth["Email"]
            # bob: nothing about alice
            cyrus.deliver("bob", "for bob")
            changed_b, _ = await bob_es.next_state(timeout=2)
            assert set(changed_b) == {"bob"}
        finally:
            alice_es.close()
            bob_es.close()
            await ws.bye()


@pytest_twisted.ensureDeferred
async def test_poll_mode_delivers(cyrus: CyrusServer, tmp_path: Path) -> None:
    async with gateway(cyrus, tmp_path, changes="poll", extra="poll-interval = 1\n") as d:
        stream = await open_stream(es_url(d.base), basic("alice", "alice-pw"))
        try:
            cyrus.deliver("alice", "polled")
            changed, _ = await stream.next_state(timeout=5)
            while changed["alice"].get("Email") != cyrus.states("alice", "alice")["Email"]:
                changed, _ = await stream.next_state(timeout=5)
        finally:
            stream.close()
