"""Every answer branch against a real TLS push service on 127.0.0.1 (C-WP-2, WP-*, PS-18).

The in-process daemon delivers through its real HTTP agent and connection pool; the
push service decrypts each body with http_ece, verifies VAPID and answers as scripted:
201, 404, 410, 429 with Retry-After, 500, or not at all. Waits are bounded and driven
by events (a POST arriving, a log line), never fixed sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import address as taddress
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from zope.interface import implementer

from jmappushd.config import PushConfig
from jmappushd.metrics import Metrics
from jmappushd.transports.webpush.keys import KeyRing
from jmappushd.transports.webpush.policy import Outcome
from jmappushd.transports.webpush.sender import AgentTransport, Sender, build_agent
from jmappushd.transports.webpush.vapid import VapidKey
from tests.push_receiver import FAST, LogWatcher, PushWorld, ReceiverServer, start_world
from tests.support import basic, live_reactor

pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
ALICE = basic("alice", "secret")
Setup = Callable[..., Awaitable[tuple[PushWorld, str, str]]]


@pytest_twisted.async_yield_fixture
async def verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    """A daemon with a created and verified subscription at /sub; yields (world, id, account)."""
    worlds: list[PushWorld] = []
    logs = LogWatcher()

    async def setup(extra: str = FAST) -> tuple[PushWorld, str, str]:
        world = await start_world(tmp_path, monkeypatch, extra)
        worlds.append(world)
        world.logs = logs  # type: ignore[attr-defined]
        account = await world.daemon.add_user("alice")
        sub_id = await world.create(ALICE)
        await world.verify(sub_id, ALICE)
        return world, sub_id, account

    yield setup
    logs.close()
    for world in worlds:
        await world.close()
        assert world.service.errors == []


async def exists(w: PushWorld, sub_id: str) -> bool:
    _, out = await w.call("PushSubscription/get", {"ids": [sub_id]}, ALICE)
    return bool(out["list"])


@pytest_twisted.ensureDeferred
async def test_201_delivers_once(verified: Setup) -> None:
    """WP-5, SC-1: a 201 ends the delivery; one StateChange per change, no retry."""
    w, _, account = await verified()
    await w.daemon.publish({account: {"Email": "s1"}})
    [_, got] = await w.service.wait_count("/sub", 2)
    assert got.message == {"@type": "StateChange", "changed": {account: {"Email": "s1"}}}
    await w.daemon.publish({account: {"Email": "s2"}})
    received = await w.service.wait_count("/sub", 3)
    assert [r.message["changed"] for r in received[1:]] == [
        {account: {"Email": "s1"}}, {account: {"Email": "s2"}}]


@pytest.mark.parametrize("status", [404, 410])
@pytest_twisted.ensureDeferred
async def test_gone_destroys_the_subscription(verified: Setup, status: int) -> None:
    """WP-6, C-WP-2: 404 or 410 destroys the subscription; nothing more is sent to it."""
    w, sub_id, account = await verified()
    w.service.script("/sub", (status, {}))
    await w.daemon.publish({account: {"Email": "s1"}})
    await w.logs.wait_for(f"subscription {sub_id} destroyed")  # type: ignore[attr-defined]
    assert not await exists(w, sub_id)
    await w.daemon.publish({account: {"Email": "s2"}})
    assert len(w.service.on("/sub")) == 2


@pytest_twisted.ensureDeferred
async def test_500_retried_within_budget_then_dropped_and_carried(verified: Setup) -> None:
    """C-WP-2: 5xx is retried push-attempts-max times in total, then dropped (logged with the
    subscription id) and the subscription stays; the next StateChange carries both changes."""
    w, sub_id, account = await verified()
    w.service.script("/sub", (500, {}), (500, {}), (500, {}))
    await w.daemon.publish({account: {"Email": "s1"}})
    await w.logs.wait_for(f"subscription {sub_id}: StateChange dropped")  # type: ignore
    assert len(w.service.on("/sub")) == 1 + 3
    assert await exists(w, sub_id)
    await w.daemon.publish({account: {"Mailbox": "m1"}})
    received = await w.service.wait_count("/sub", 5)
    assert received[-1].message["changed"] == {account: {"Email": "s1", "Mailbox": "m1"}}
    metrics = w.daemon.app.metrics.registry
    assert metrics.get_sample_value("jmappushd_push_dropped_total", {"reason": "attempts"}) == 1


@pytest_twisted.ensureDeferred
async def test_429_retry_after_is_honoured(verified: Setup) -> None:
    """PS-22, WP-8: after 429 Retry-After: 1 no POST comes for a second; changes in between
    arrive merged in the next StateChange."""
    w, _, account = await verified()
    w.service.script("/sub", (429, {"Retry-After": "1"}))
    await w.daemon.publish({account: {"Email": "s1"}})
    [_, first] = await w.service.wait_count("/sub", 2)
    await w.daemon.publish({account: {"Email": "s2", "Mailbox": "m1"}})
    [_, _, second] = await w.service.wait_count("/sub", 3)
    assert second.at - first.at >= 1.0
    assert second.message["changed"] == {account: {"Email": "s2", "Mailbox": "m1"}}


@pytest_twisted.ensureDeferred
async def test_hanging_push_service_times_out_and_retries(verified: Setup) -> None:
    """push-timeout bounds each POST: a push service that never answers counts as a failed
    attempt and the change is retried."""
    w, _, account = await verified(FAST.replace("push-timeout = 2000", "push-timeout = 300"))
    w.service.script("/sub", None)
    await w.daemon.publish({account: {"Email": "s1"}})
    received = await w.service.wait_count("/sub", 3)
    assert received[2].message["changed"] == {account: {"Email": "s1"}}
    assert received[2].at - received[1].at >= 0.3
    metrics = w.daemon.app.metrics.registry
    assert metrics.get_sample_value("jmappushd_push_deliveries_total",
                                    {"kind": "state", "outcome": "error"}) == 1


@pytest_twisted.ensureDeferred
async def test_redirect_is_not_followed(verified: Setup) -> None:
    """C-WP-2, PS-18: a 307 to another path is never followed; the POST is retried at the
    subscription URL."""
    w, _, account = await verified()
    w.service.script("/sub", (307, {"Location": "/elsewhere"}))
    await w.daemon.publish({account: {"Email": "s1"}})
    received = await w.service.wait_count("/sub", 3)
    assert received[2].message["changed"] == {account: {"Email": "s1"}}
    assert w.service.on("/elsewhere") == []


@implementer(IHostResolution)
class Resolution:
    """A resolution answered at once: there is nothing left to cancel."""

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers every name with 127.0.0.1 (a DNS-rebinding attacker's name)."""

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str,
                        portNumber: int = 0, addressTypes: Any = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        resolution = Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.addressResolved(taddress.IPv4Address("TCP", "127.0.0.1", portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_ssrf_refused_at_connect(tmp_path: Path) -> None:
    """PS-18, C-PS-3: with private targets not allowed, a name resolving to 127.0.0.1 (and
    localhost through the system resolver) is refused when connecting, and nothing reaches
    the push service; allowing private targets lets the same request through."""
    from twisted.internet.ssl import Certificate
    from twisted.web.client import BrowserLikePolicyForHTTPS

    receiver = ReceiverServer(tmp_path)
    key = VapidKey.generate()
    reactor = live_reactor()
    keyring = KeyRing(reactor)
    keyring.set_current(key)
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(receiver.cert_pem))
    agent = receiver.service.agent("/p")

    class Target:
        id: str = "S1"
        key_id: str = key.key_id
        keys: tuple[ec.EllipticCurvePublicKey, bytes, bytes] | None = None

        def __init__(self, url: str) -> None:
            self.url = url

    try:
        results = []
        for allow, resolver, host in ((False, FakeResolver(), "push.test"),
                                      (False, None, "localhost"),
                                      (True, FakeResolver(), "push.test")):
            push_agent, pool = build_agent(reactor, allow, 5, policy, resolver,
                                           keep_per_host=4)
            sender = Sender(AgentTransport(push_agent, reactor, 5), keyring, reactor,
                            PushConfig(), Metrics())
            target = Target(f"https://{host}:{receiver.port}/p")
            result = await sender.send(target, b'{"@type":"StateChange","changed":{}}', "state")
            results.append(result.outcome)
            await pool.closeCachedConnections()
        assert results == [Outcome.REJECTED, Outcome.REJECTED, Outcome.DELIVERED]
        assert len(receiver.service.on("/p")) == 1 and agent is not None
    finally:
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_shutdown_cancels_in_flight_and_records_what_is_owed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown: a POST the push service never answers is cancelled (not counted as an
    outcome), the owed state and attempt count are in the store, and the pool is closed."""
    import json
    import sqlite3

    w = await start_world(tmp_path, monkeypatch)
    try:
        account = await w.daemon.add_user("alice")
        sub_id = await w.create(ALICE)
        await w.verify(sub_id, ALICE)
        w.service.script("/sub", None)
        await w.daemon.publish({account: {"Email": "s1"}})
        await w.service.wait_count("/sub", 2)
        metrics = w.daemon.app.metrics.registry
        await w.daemon.service.stopService()
        assert metrics.get_sample_value("jmappushd_push_deliveries_total",
                                        {"kind": "state", "outcome": "error"}) is None
        db = sqlite3.connect(w.daemon.config.storage.path)
        pending, attempts = db.execute("SELECT pending, attempts FROM push_subscriptions "
                                       "WHERE id = ?", (sub_id,)).fetchone()
        db.close()
        assert json.loads(pending) == {account: {"Email": "s1"}} and attempts == 1
    finally:
        await w.receiver.close()
    assert w.service.errors == []
