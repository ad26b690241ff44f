"""Web Push in cluster mode, end to end (issue 13): three ``twistd -n jmappushd`` nodes on
one PostgreSQL database, a real TLS push service decrypting with http_ece. Each
subscription is delivered by exactly one node (the holder of its bucket's lease); when
that node is SIGKILLed mid-retry another takes the bucket over once the lease expires
and delivers the merged newest state exactly once, within the attempt budget counted
across nodes; a node stopped cleanly hands its buckets over at once.

Waits are bounded polls on events (a POST arriving, a lease row changing), never a
fixed sleep as a barrier.
"""

from __future__ import annotations

import hashlib
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from twisted.internet import threads

from tests.daemon_process import DaemonProcess
from tests.pg_server import ROLE_PASSWORD, PgServer
from tests.push_receiver import ReceiverServer
from tests.test_cluster_e2e import eventually, start_all, stop_all
from tests.test_pg_e2e import health
from tests.test_push_e2e import create_and_verify, publish

pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")

LEASE = 3.0  # s: [cluster] lease-time (the smallest allowed), renewals every second
ATTEMPT_INTERVAL = 0.5  # s: [push] push-attempt-interval
PUSH = ("push-throttle = 0\npush-retry-interval = 50\n"
        f"push-attempt-interval = {int(ATTEMPT_INTERVAL * 1000)}\npush-timeout = 1500\n"
        "create-rate = 1000\npush-attempts-max = 12\n")


def cluster(tmp_path: Path, server: PgServer, dbname: str, count: int = 3
            ) -> list[DaemonProcess]:
    made = []
    for n in range(count):
        folder = tmp_path / f"node{n}"
        folder.mkdir()
        password = folder / "db.password"
        password.write_text(ROLE_PASSWORD + "\n")
        password.chmod(0o600)
        storage = (f"backend = postgresql\ndsn = {server.tcp_dsn(dbname)}\n"
                   f"password-file = {password}\npool-size = 4\n")
        made.append(DaemonProcess(folder, extra=PUSH, sections={
            "storage": storage, "cluster": f"node-name = node{n}\nlease-time = {LEASE:g}"}))
    return made


def bucket_of(sub_id: str) -> int:
    return hashlib.sha256(sub_id.encode()).digest()[0]


def owners(server: PgServer, dbname: str) -> dict[str, int]:
    """Buckets held per node (unexpired leases only)."""
    with psycopg.connect(server.dsn(dbname), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT owner, count(*) FROM push_leases WHERE expires > clock_timestamp() "
            "GROUP BY owner").fetchall()
    return {str(owner).rsplit("/", 1)[0]: int(count) for owner, count in rows
            if owner is not None}


def owner_of(server: PgServer, dbname: str, sub_id: str) -> str | None:
    with psycopg.connect(server.dsn(dbname), autocommit=True) as connection:
        row = connection.execute(
            "SELECT owner FROM push_leases WHERE bucket = %s AND expires > clock_timestamp()",
            (bucket_of(sub_id),)).fetchone()
    return None if row is None else str(row[0]).rsplit("/", 1)[0]  # node/incarnation


def split_by_owner(server: PgServer, dbname: str, daemons: list[DaemonProcess], sub_id: str
                   ) -> tuple[str, DaemonProcess, list[DaemonProcess]]:
    """The name of the node delivering ``sub_id``, that node, and the others."""
    owner = owner_of(server, dbname, sub_id)
    assert owner is not None
    node = daemons[int(owner.removeprefix("node"))]
    return owner, node, [d for d in daemons if d is not node]


def balanced(server: PgServer, dbname: str, names: set[str]) -> bool:
    held = owners(server, dbname)
    share = -(-256 // len(names))
    return set(held) == names and sum(held.values()) == 256 and max(held.values()) <= share


def state_posts(d: DaemonProcess) -> float:
    """The node's StateChange POSTs of any outcome, from its metrics."""
    with urllib.request.urlopen(d.admin + "/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith('jmappushd_push_deliveries_total{kind="state"'):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: PgServer
                   ) -> tuple[list[DaemonProcess], ReceiverServer, str]:
    receiver = ReceiverServer(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
    dbname = server.new_database()
    daemons = cluster(tmp_path, server, dbname)
    await threads.deferToThread(daemons[0].ctl, "user", "add", "alice", "--password-stdin",
                                "--account-id", "acc1", stdin="s3cret\n")
    await start_all(daemons)
    names = {f"node{n}" for n in range(len(daemons))}
    await eventually(lambda: balanced(server, dbname, names), "the buckets spread over 3 nodes")
    return daemons, receiver, dbname


async def finish(daemons: list[DaemonProcess], receiver: ReceiverServer) -> None:
    try:
        await stop_all(daemons)
    finally:
        await receiver.close()
    assert receiver.service.errors == [], receiver.service.errors


@pytest_twisted.ensureDeferred
async def test_each_subscription_is_delivered_by_exactly_one_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_server: PgServer) -> None:
    """Publishes on every node reach the subscription once each, in order, and only the
    bucket's owner POSTs (the other nodes' StateChange counters stay at zero)."""
    daemons, receiver, dbname = await prepared(tmp_path, monkeypatch, pg_server)
    service = receiver.service
    try:
        sub_id = await create_and_verify(daemons[1], receiver)
        owner = owner_of(pg_server, dbname, sub_id)
        assert owner is not None
        for i, d in enumerate(daemons * 2):
            await publish(d, {"acc1": {"Email": f"s{i}"}})
            received = await service.wait_count("/sub", i + 2, timeout=20)
            assert received[-1].message["changed"] == {"acc1": {"Email": f"s{i}"}}
        # The receiver records a POST before the sender counts its answer: poll.
        want = [6.0 if f"node{n}" == owner else 0.0 for n in range(3)]
        await eventually(lambda: [state_posts(d) for d in daemons] == want,
                         f"StateChange POSTs per node to be {want}", timeout=10)
        shown = [(await threads.deferToThread(health, d.admin))[1]["cluster"] for d in daemons]
        assert [c["node"] for c in shown] == ["node0", "node1", "node2"]
        assert sum(c["pushBuckets"] for c in shown) == 256
        assert all(c["liveNodes"] == 3 and c["leasesRenewed"] for c in shown)
        # Each node folds what it holds of the log into states by itself (about every
        # second while changes wait), so /health's lag of states drops to nothing.
        await eventually(lambda: all(health(d.admin)[1]["cluster"]["unfoldedChanges"] == 0
                                     for d in daemons), "every node to have folded", timeout=10)
        assert len(service.on("/sub")) == 7  # one verification, six StateChanges
    finally:
        await finish(daemons, receiver)


@pytest_twisted.ensureDeferred
async def test_sigkill_of_the_owner_mid_retry_another_node_delivers_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_server: PgServer) -> None:
    """The owner of a failing subscription is SIGKILLed between retries; the push service
    recovers; another node takes the bucket when the lease expires and delivers the
    merged newest state exactly once, within lease-time plus one attempt interval (plus
    a renewal's slack), and the attempts of both nodes stay within push-attempts-max."""
    daemons, receiver, dbname = await prepared(tmp_path, monkeypatch, pg_server)
    service = receiver.service
    try:
        sub_id = await create_and_verify(daemons[0], receiver)
        owner, victim, others = split_by_owner(pg_server, dbname, daemons, sub_id)
        service.default = (500, {})
        await publish(others[0], {"acc1": {"Email": "s1"}})
        await service.wait_count("/sub", 2, timeout=20)  # the first attempt failed
        await publish(others[1], {"acc1": {"Mailbox": "m1"}})
        merged = {"acc1": {"Email": "s1", "Mailbox": "m1"}}
        await service.wait_for(lambda: any(r.message.get("changed") == merged
                                           for r in service.on("/sub")), timeout=20)
        await threads.deferToThread(victim.kill)
        killed = time.monotonic()
        before = len(service.on("/sub"))
        failed = [r.message["changed"] for r in service.on("/sub")[1:]]
        assert all(c["acc1"]["Email"] == "s1" for c in failed)
        service.default = (201, {})
        received = await service.wait_count("/sub", before + 1, timeout=30)
        took = time.monotonic() - killed
        assert received[-1].message == {"@type": "StateChange", "changed": merged}
        assert took < LEASE + ATTEMPT_INTERVAL + 1.5, took
        new_owner = owner_of(pg_server, dbname, sub_id)
        assert new_owner is not None and new_owner != owner
        await publish(others[0], {"acc1": {"Thread": "t1"}})
        received = await service.wait_count("/sub", before + 2, timeout=20)
        assert received[-1].message["changed"] == {"acc1": {"Thread": "t1"}}  # exactly once
        assert len(service.on("/sub")) == before + 2
        assert len(failed) + 1 <= 12  # one budget across both nodes
    finally:
        await finish(daemons, receiver)


@pytest_twisted.ensureDeferred
async def test_a_node_stopped_cleanly_hands_its_buckets_over_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_server: PgServer) -> None:
    """SIGTERM: the node records what is owed and releases its leases; the others take
    them at their next renewal, without waiting for expiry, and deliver from there."""
    daemons, receiver, dbname = await prepared(tmp_path, monkeypatch, pg_server)
    service = receiver.service
    try:
        sub_id = await create_and_verify(daemons[2], receiver)
        owner, leaving, staying = split_by_owner(pg_server, dbname, daemons, sub_id)
        await threads.deferToThread(leaving.stop)
        assert owner not in owners(pg_server, dbname)
        names = {f"node{daemons.index(d)}" for d in staying}
        await eventually(lambda: balanced(pg_server, dbname, names),
                         "the survivors to take every bucket", timeout=LEASE)
        await publish(staying[0], {"acc1": {"Email": "after"}})
        received = await service.wait_count("/sub", 2, timeout=20)
        assert received[-1].message["changed"] == {"acc1": {"Email": "after"}}
    finally:
        await finish(daemons, receiver)
