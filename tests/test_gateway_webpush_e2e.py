"""Web Push through the gateway in front of a real Cyrus, with no client of the user connected.

Alice and bob each create a PushSubscription through the gateway with their own Cyrus
credentials, pointing at a local TLS push service (tests/push_receiver.py) that checks
VAPID and decrypts with http_ece; each verifies it with the PushVerification code. Then
every client is gone: the only thing the daemon holds for them is the subscription. A
message delivered to Cyrus must still reach the push service as an encrypted StateChange
whose Email state is the one Cyrus's own ``Email/get`` returns, within one second (the
push throttle is 0), because the daemon reads the states with its reader credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.cyrus_server import CyrusServer
from tests.ece_decrypt import decrypt
from tests.gateway_support import api, cyrus_with_users, gateway
from tests.push_receiver import FAST, ReceiverServer
from tests.support import LiveDaemon

pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
THROTTLE_S = 0.0  # FAST sets push-throttle = 0


@pytest.fixture(scope="module")
def cyrus() -> Iterator[CyrusServer]:
    yield from cyrus_with_users()


async def call(d: LiveDaemon, user: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """One method call through the gateway as ``user``; its response arguments."""
    code, answer = await api(d, user, [[name, args, "0"]])
    assert code == 200, answer
    [[out_name, out, _]] = answer["methodResponses"]
    assert out_name == name, out
    return dict(out)


async def subscribe(d: LiveDaemon, receiver: ReceiverServer, user: str) -> str:
    """PS-13, PS-15: create ``user``'s subscription at ``/<user>``, then verify it with the
    code the push service received."""
    path = f"/{user}"
    out = await call(d, user, "PushSubscription/set", {"create": {"c": {
        "deviceClientId": f"{user}-phone", "url": receiver.url(path),
        "keys": receiver.service.agent(path).keys}}})
    sub_id = str(out["created"]["c"]["id"])
    [verification] = await receiver.service.wait_count(path, 1)
    assert verification.message["@type"] == "PushVerification"
    assert verification.message["pushSubscriptionId"] == sub_id
    out = await call(d, user, "PushSubscription/set", {"update": {sub_id: {
        "verificationCode": verification.message["verificationCode"]}}})
    assert out["updated"] == {sub_id: None}
    return sub_id


def state_changes(receiver: ReceiverServer, path: str) -> list[Any]:
    return [r.message for r in receiver.service.on(path)
            if isinstance(r.message, dict) and r.message.get("@type") == "StateChange"]


@pytest_twisted.ensureDeferred
async def test_a_delivery_reaches_a_push_subscription_with_no_client_connected(
        cyrus: CyrusServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SC-1, ENC-6, VAPID-12 in gateway mode: the StateChange carries Cyrus's own Email
    state, arrives within a second of ``deliver`` returning, decrypts with http_ece and
    with the independent decryptor, and bob's subscription hears nothing of alice's mail
    (nor alice's of bob's)."""
    receiver = ReceiverServer(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))  # the daemon trusts it
    service = receiver.service
    try:
        async with gateway(cyrus, tmp_path, push=FAST) as d:
            await subscribe(d, receiver, "alice")
            await subscribe(d, receiver, "bob")
            # Every client is gone (each request closed its connection): what listens for
            # alice and bob now is their subscriptions, nothing else.
            assert d.app.hub.listener_count == 2

            await threads.deferToThread(cyrus.deliver, "alice", "pushed while offline")
            delivered = time.monotonic()
            [_, change] = await service.wait_count("/alice", 2, timeout=5)
            truth = cyrus.states("alice", "alice")
            assert change.message["@type"] == "StateChange"
            assert set(change.message["changed"]) == {"alice"}
            assert change.message["changed"]["alice"]["Email"] == truth["Email"]
            assert change.at - delivered < 1.0 + THROTTLE_S, change.at - delivered
            assert change.header("content-encoding") == "aes128gcm"
            agent = service.agent("/alice")
            assert json.loads(decrypt(change.body, agent.private, agent.auth)) == \
                change.message

            await threads.deferToThread(cyrus.deliver, "bob", "for bob")
            [_, bob_change] = await service.wait_count("/bob", 2, timeout=5)
            assert set(bob_change.message["changed"]) == {"bob"}
            assert bob_change.message["changed"]["bob"]["Email"] == \
                cyrus.states("bob", "bob")["Email"]
            assert all(set(m["changed"]) == {"bob"} for m in state_changes(receiver, "/bob"))
            assert all(set(m["changed"]) == {"alice"}
                       for m in state_changes(receiver, "/alice"))
    finally:
        await receiver.close()
    assert service.errors == [], service.errors
