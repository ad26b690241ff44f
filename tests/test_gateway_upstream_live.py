"""The gateway's upstream client against the real Cyrus: session, API, 401, outage, timeout."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from jmappushd.config import UpstreamConfig
from jmappushd.gateway.session import parse_session
from jmappushd.gateway.upstream import UpstreamClient, UpstreamRejected, UpstreamUnavailable
from tests.cyrus_server import CyrusServer, running_cyrus
from tests.support import free_port, live_reactor


@pytest.fixture(scope="module")
def cyrus() -> Iterator[CyrusServer]:
    yield from running_cyrus(("alice",))


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def client(url: str, timeout_ms: int = 10_000) -> UpstreamClient:
    config = UpstreamConfig(session_url=url, timeout=timeout_ms)
    return UpstreamClient(live_reactor(), config, max_body=1_000_000)


@pytest.fixture
def upstream(cyrus: CyrusServer) -> UpstreamClient:
    return client(cyrus.session_url)


@pytest_twisted.inlineCallbacks
def test_session_and_api_through_the_pool(cyrus: CyrusServer, upstream: UpstreamClient
                                          ) -> Any:
    response = yield upstream.get(cyrus.session_url, basic("alice", "alice-pw"))
    session = parse_session(response.body, cyrus.session_url, upstream.name)
    assert session.username == "alice"
    assert session.api_url == f"{cyrus.base}/jmap/"
    body = json.dumps({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
                       "methodCalls": [["Mailbox/get", {"accountId": "alice", "ids": []},
                                        "0"]]}).encode()
    for _ in range(3):  # the keep-alive pool serves several requests
        answer = yield upstream.post_json(session.api_url, basic("alice", "alice-pw"), body)
        assert answer.status == 200
        assert json.loads(answer.body)["methodResponses"][0][0] == "Mailbox/get"
    yield upstream.close()


@pytest_twisted.inlineCallbacks
def test_wrong_password_is_rejected_with_the_upstream_challenge(
        cyrus: CyrusServer, upstream: UpstreamClient) -> Any:
    with pytest.raises(UpstreamRejected) as info:
        yield upstream.get(cyrus.session_url, basic("alice", "wrong"))
    assert info.value.status == 401
    assert any(c.lower().startswith(b"basic") for c in info.value.challenges)
    assert upstream.health.up  # a refusal is an answer, not an outage
    yield upstream.close()


@pytest_twisted.inlineCallbacks
def test_unreachable_upstream_is_unavailable_and_logged_once() -> Any:
    port = free_port()
    down = client(f"http://127.0.0.1:{port}/jmap/")
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable) as info:
            yield down.get(f"http://127.0.0.1:{port}/jmap/", basic("a", "b"))
        assert f"127.0.0.1:{port}" in info.value.reason and "unreachable" in info.value.reason
    assert not down.health.up
    yield down.close()


@pytest_twisted.inlineCallbacks
def test_a_silent_upstream_times_out() -> Any:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (in the kernel) and never answers
    port = silent.getsockname()[1]
    try:
        slow = client(f"http://127.0.0.1:{port}/jmap/", timeout_ms=300)
        with pytest.raises(UpstreamUnavailable) as info:
            yield slow.get(f"http://127.0.0.1:{port}/jmap/", basic("a", "b"))
        assert "did not answer within 0.3s" in info.value.reason
        yield slow.close()
    finally:
        silent.close()
