"""End to end with ``twistd -n jmappushd`` as a subprocess and a real TLS push service.

The push service runs on this test's reactor; the daemon, jmappushctl and their blocking
helpers run in threads so the push service keeps answering meanwhile. Every wait is bounded
and triggered by an event (a POST arriving), never a fixed sleep.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import threads

from tests.daemon_process import DaemonProcess
from tests.push_receiver import CORE, ReceiverServer
from tests.support import RequestHeaders, bearer

pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
AUTH: RequestHeaders = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
PUSH = ("push-throttle = 0\npush-retry-interval = 50\npush-attempt-interval = 300\n"
        "push-timeout = 5000\ncreate-rate = 1000\npush-attempts-max = 4\n")


async def call(d: DaemonProcess, name: str, args: dict[str, Any]) -> dict[str, Any]:
    r = await treq.post(d.base + "/jmap/api/", json={"using": [CORE], "methodCalls": [
        [name, args, "0"]]}, headers={"Content-Type": "application/json", **AUTH})
    assert r.code == 200, await r.text()
    [[out_name, out, _]] = (await r.json())["methodResponses"]
    assert out_name == name, out
    return dict(out)


async def publish(d: DaemonProcess, changed: dict[str, dict[str, str]]) -> None:
    """POST /publish on the admin listener (what jmappushctl publish does, minus its start-up)."""
    token = (d.tmp_path / "state" / "admin.token").read_text().strip()
    r = await treq.post(d.admin + "/publish", json={"@type": "StateChange", "changed": changed},
                        headers=bearer(token))
    assert r.code == 202, await r.text()


async def create_and_verify(d: DaemonProcess, receiver: ReceiverServer) -> str:
    """PS-13, PS-15 over HTTP: create, read the PushVerification, write the code back."""
    out = await call(d, "PushSubscription/set", {"create": {"c": {
        "deviceClientId": "phone", "url": receiver.url("/sub"),
        "keys": receiver.service.agent("/sub").keys}}})
    sub_id = str(out["created"]["c"]["id"])
    [verification] = await receiver.service.wait_count("/sub", 1, timeout=20)
    assert verification.message["@type"] == "PushVerification"
    assert verification.message["pushSubscriptionId"] == sub_id
    code = verification.message["verificationCode"]
    out = await call(d, "PushSubscription/set", {"update": {sub_id: {"verificationCode": code}}})
    assert out["updated"] == {sub_id: None}
    return sub_id


async def prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[DaemonProcess, ReceiverServer]:
    receiver = ReceiverServer(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))  # the daemon trusts the service
    d = DaemonProcess(tmp_path, extra=PUSH)
    await threads.deferToThread(d.ctl, "user", "add", "alice", "--password-stdin",
                                "--account-id", "acc1", stdin="s3cret\n")
    await threads.deferToThread(d.start)
    return d, receiver


async def finish(d: DaemonProcess, receiver: ReceiverServer) -> None:
    try:
        if d.process is not None:
            await threads.deferToThread(d.stop)
    finally:
        await receiver.close()
    assert receiver.service.errors == [], receiver.service.errors


@pytest_twisted.ensureDeferred
async def test_create_verify_publish_over_http(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """PS-13, PS-15, SC-1, ENC-6, VAPID-12: create → verification received → verify with the
    code → ``jmappushctl publish`` → a StateChange the push service decrypts with http_ece."""
    d, receiver = await prepared(tmp_path, monkeypatch)
    try:
        await create_and_verify(d, receiver)
        await threads.deferToThread(d.ctl, "publish", "acc1", "Email=s42")
        [_, change] = await receiver.service.wait_count("/sub", 2, timeout=20)
        assert change.message == {"@type": "StateChange", "changed": {"acc1": {"Email": "s42"}}}
        assert change.header("content-encoding") == "aes128gcm"
        assert change.claims["aud"] == f"https://127.0.0.1:{receiver.port}"
    finally:
        await finish(d, receiver)


@pytest_twisted.ensureDeferred
async def test_sigkill_mid_retry_delivers_merged_change_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability: against a failing push service, SIGKILL the daemon between retries,
    restart it, let the service recover: the merged StateChange arrives exactly once, within
    push-attempts-max attempts, and later changes are not mixed with it."""
    d, receiver = await prepared(tmp_path, monkeypatch)
    service = receiver.service
    try:
        await create_and_verify(d, receiver)
        service.default = (500, {})
        await publish(d, {"acc1": {"Email": "s1"}})
        await service.wait_count("/sub", 2, timeout=20)  # first attempt failed
        await publish(d, {"acc1": {"Mailbox": "m1"}})
        merged = {"acc1": {"Email": "s1", "Mailbox": "m1"}}
        # A retry carrying both changes has failed: kill the daemon before the next one.
        await service.wait_for(lambda: any(r.message.get("changed") == merged
                                           for r in service.on("/sub")), timeout=20)
        await threads.deferToThread(d.kill)
        before = len(service.on("/sub"))
        failed = [r.message["changed"] for r in service.on("/sub")[1:]]
        assert all(c["acc1"]["Email"] == "s1" for c in failed)
        service.default = (201, {})
        await threads.deferToThread(d.start)
        received = await service.wait_count("/sub", before + 1, timeout=20)
        assert received[-1].message == {"@type": "StateChange", "changed": merged}
        await publish(d, {"acc1": {"Thread": "t1"}})
        received = await service.wait_count("/sub", before + 2, timeout=20)
        # Exactly once: the first POST after the restart was the merged change, the next one
        # carries only the new change.
        assert received[-1].message["changed"] == {"acc1": {"Thread": "t1"}}
        assert len(failed) + 1 <= 4  # within push-attempts-max, across the crash
    finally:
        await finish(d, receiver)
