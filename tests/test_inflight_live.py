"""maxConcurrentRequests per user across HTTP and every WebSocket, against the
in-process daemon on 127.0.0.1 with real clients (issue 11; API-21, WS-15)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from jmappushd.core.inflight import InFlightRequests
from tests.support import LiveDaemon, basic, make_config, start_daemon, stop_daemon
from tests.test_eventsource_live import wait_for
from tests.test_websocket_helpers import CORE, basic_header, connect, echo
from tests.test_websocket_live import install_slow, slow

LIMIT = 3
ERR = "urn:ietf:params:jmap:error:"


@pytest.fixture
def d(tmp_path: Path) -> Iterator[LiveDaemon]:
    config = make_config(tmp_path, sections={"jmap": f"max-concurrent-requests = {LIMIT}"})
    daemon = pytest_twisted.blockon(defer.ensureDeferred(start_daemon(config)))
    yield daemon
    pytest_twisted.blockon(defer.ensureDeferred(stop_daemon(daemon)))


def http_slow(gate: str) -> dict[str, Any]:
    return {"using": [CORE], "methodCalls": [["Test/slow", {"gate": gate}, "s"]]}


HTTP_ECHO = {"using": [CORE], "methodCalls": [["Core/echo", {"x": 1}, "e"]]}


async def user_id(d: LiveDaemon, name: str) -> str:
    user = await d.app.store.get_user(name)
    assert user is not None
    return user.id


@pytest_twisted.ensureDeferred
async def test_one_count_per_user_across_http_and_websockets(d: LiveDaemon) -> None:
    """WS-15, API-21: with maxConcurrentRequests 3, one HTTP request and one request on
    each of two WebSockets fill alice's slots; a request on a third WebSocket gets a
    RequestError limit/maxConcurrentRequests with its requestId, an HTTP request gets
    400 limit/maxConcurrentRequests; bob is unaffected; a finished request frees a slot
    for any of her transports."""
    gates = install_slow(d)
    await d.add_user("alice")
    await d.add_user("bob")
    alice = await user_id(d, "alice")
    sockets = [await connect(d.base, basic_header("alice")) for _ in range(3)]
    held_http = defer.ensureDeferred(d.api(http_slow("h"), basic("alice", "secret")))
    sockets[0].send(slow("a", "A"))
    sockets[1].send(slow("b", "B"))
    await wait_for(lambda: d.app.inflight.count(alice) == LIMIT, "alice's slots to fill")

    sockets[2].send(echo(rid="C"))
    refused = await sockets[2].next()
    assert refused["@type"] == "RequestError" and refused["requestId"] == "C"
    assert refused["type"] == ERR + "limit" and refused["limit"] == "maxConcurrentRequests"
    r = await d.api(HTTP_ECHO, basic("alice", "secret"))
    problem = await r.json()
    assert r.code == 400 and problem["limit"] == "maxConcurrentRequests"

    r = await d.api(HTTP_ECHO, basic("bob", "secret"))
    assert r.code == 200 and (await r.json())["methodResponses"][0][0] == "Core/echo"
    bob = await connect(d.base, basic_header("bob"))
    bob.send(echo(rid="bob"))
    assert (await bob.next())["requestId"] == "bob"

    gates["a"].callback(None)
    assert (await sockets[0].next())["requestId"] == "A"
    sockets[2].send(echo(rid="D"))
    assert (await sockets[2].next())["@type"] == "Response"
    gates["b"].callback(None)
    gates["h"].callback(None)
    assert (await sockets[1].next())["requestId"] == "B"
    assert (await held_http).code == 200
    await wait_for(lambda: d.app.inflight.count(alice) == 0, "alice's slots to free")
    for client in (*sockets, bob):
        await client.bye()


def test_in_flight_counter() -> None:
    """The counter refuses beyond its limit per user, keeps users apart, and forgets a
    user whose requests are all answered (no entry per user ever seen)."""
    counter = InFlightRequests(2)
    assert counter.acquire("u") and counter.acquire("u") and not counter.acquire("u")
    assert counter.acquire("v") and counter.count("u") == 2
    counter.release("u")
    assert counter.acquire("u")
    for _ in range(2):
        counter.release("u")
    counter.release("v")
    assert counter.count("u") == 0 and counter._counts == {}
