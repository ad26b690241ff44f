"""Gateway mode against a real Cyrus: credentials changed upstream reach live connections.

A private Cyrus (tests/cyrus_server.py) with alice, bob and the reader; the gateway runs in
this process with ``[auth] cache-ttl = 1``, so it asks Cyrus about every live connection's
credentials once a second. alice's password changed in Cyrus's sasldb ends her EventSource
stream and her WebSocket (1008, C-WS-5) within that second plus one, while bob's stay and
keep receiving; a mailbox of bob's shared with alice upstream (``lr``) makes her stream
and socket follow his account (its changes reach them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from jmappushd.transports.eventsource.service import EventSourceService
from tests.cyrus_server import CyrusServer
from tests.gateway_support import cyrus_with_users, gateway
from tests.support import basic
from tests.test_eventsource_live import es_url, open_stream, wait_for
from tests.test_websocket_helpers import basic_header, connect

AUTH = {"auth": "cache-ttl = 1"}
CLOSE_POLICY_VIOLATION = 1008


@pytest.fixture(scope="module")
def cyrus() -> Iterator[CyrusServer]:
    yield from cyrus_with_users()


@pytest_twisted.ensureDeferred
async def test_a_password_changed_upstream_ends_her_connections_only(
        cyrus: CyrusServer, tmp_path: Path) -> None:
    async with gateway(cyrus, tmp_path, more=AUTH) as d:
        alice_es = await open_stream(es_url(d.base), basic("alice", "alice-pw"))
        alice_ws = await connect(d.base, basic_header("alice", "alice-pw"))
        bob_es = await open_stream(es_url(d.base), basic("bob", "bob-pw"))
        bob_ws = await connect(d.base, basic_header("bob", "bob-pw"))
        bob_ws.send({"@type": "WebSocketPushEnable", "dataTypes": None})
        try:
            changed = time.monotonic()
            cyrus.set_password("alice", "alice-new-pw")
            await alice_es.wait_end(timeout=2.0)
            code, _ = await alice_ws.wait_closed(timeout=2.0)
            took = time.monotonic() - changed
            assert code == CLOSE_POLICY_VIOLATION
            assert took <= 2.0, f"ended {took:.2f}s after the change (cache-ttl 1 s + 1 s)"
            assert not bob_es.ended.called and not bob_ws.closed.called
            cyrus.deliver("bob", "still listening")
            changed_b, _ = await bob_es.next_state(timeout=5)
            assert set(changed_b) == {"bob"}
            push = await bob_ws.next(timeout=5)
            assert push["@type"] == "StateChange" and set(push["changed"]) == {"bob"}
            # Her new password works at once; the old one is refused (no stale cache).
            again = await open_stream(es_url(d.base), basic("alice", "alice-new-pw"))
            again.close()
        finally:
            alice_es.close()
            bob_es.close()
            await alice_ws.bye()
            await bob_ws.bye()


@pytest_twisted.ensureDeferred
async def test_an_account_shared_upstream_is_followed(cyrus: CyrusServer, tmp_path: Path
                                                      ) -> None:
    """bob shares his mailbox with alice in Cyrus: her live stream and socket, opened
    before, then receive bob's account's changes (without reconnecting)."""
    password = cyrus.users["alice"]
    async with gateway(cyrus, tmp_path, more=AUTH) as d:
        stream = await open_stream(es_url(d.base), basic("alice", password))
        ws = await connect(d.base, basic_header("alice", password))
        ws.send({"@type": "WebSocketPushEnable", "dataTypes": None})
        registry = d.service.transport(EventSourceService).registry
        try:
            (member,) = registry.streams()
            assert member.account_ids == {"alice"}
            cyrus.grant("bob", "alice", "lr")
            await wait_for(lambda: "bob" in member.account_ids, "alice's stream to follow",
                           timeout=10)
            cyrus.deliver("bob", "shared with alice")
            changed, _ = await stream.next_state(timeout=5)
            while "bob" not in changed:
                changed, _ = await stream.next_state(timeout=5)
            assert changed["bob"]["Email"] == cyrus.states("bob", "bob")["Email"]
            push = await ws.next(timeout=5)
            while "bob" not in push["changed"]:
                push = await ws.next(timeout=5)
            assert push["changed"]["bob"]["Email"] == changed["bob"]["Email"]
        finally:
            stream.close()
            await ws.bye()
