"""Web Push: per-message CPU of three send paths, and deliveries per second to a receiver.

``--mode cpu``: CPU time (``process_time``) per message, best of several
repetitions, all three given the same encoded StateChange body (building the
JSON is not part of any of them), for (a) jmappushd's path: ``Sender.headers``
(VAPID header from the per-origin token cache, TTL, Urgency, Topic...),
``ece.encrypt`` with the subscription key parsed once, and the request objects
``AgentTransport`` builds (``Headers``, body producer); (b) pywebpush's path as
``webpush()`` runs it per message: ``Vapid.sign`` of the claims, ``WebPusher``
and its ``_prepare_send_data`` (encryption and headers), everything but the
HTTP call; (c) the floor: only the primitives RFC 8291 needs per message (an
ephemeral P-256 key pair, ECDH, the HKDF steps as one-shot HMAC-SHA-256, one
AES-128-GCM seal).

``--mode deliver``: POSTs to ``--url`` with ``--concurrency`` in flight, for
``--count`` messages, (a) through jmappushd's ``Sender`` over its real
``AgentTransport`` (encrypting and signing each message), each POST in a slot of the
daemon's ``SlotLimiter`` at its default caps, offered twice as many POSTs as the
per-origin cap lets start, and (b) as a bare treq POST loop of the same, already
encrypted, bodies. Prints one JSON line; each loop also reports this process's CPU
per delivery.

``--mode daemon``: the same deliveries through the whole ``DeliveryService`` on a
SQLite store (:func:`run_daemon`), for what the daemon adds around the POST.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from benchmarks.common import cpu_ns
from jmappushd.config import PushConfig
from jmappushd.metrics import Metrics
from jmappushd.net.bytesbody import BytesProducer
from jmappushd.transports.webpush import ece
from jmappushd.transports.webpush.b64 import b64url_decode, b64url_encode
from jmappushd.transports.webpush.keys import KeyRing
from jmappushd.transports.webpush.payload import state_change, topic_for
from jmappushd.transports.webpush.sender import (
    AgentTransport,
    Sender,
    build_agent,
    request_headers,
)
from jmappushd.transports.webpush.slots import SlotLimiter, slot_key
from jmappushd.transports.webpush.vapid import VapidKey

CHANGED = {"A1b2C3d4E5f6G7h8I9j0K1l2": {"Email": "s1234", "Mailbox": "s88", "Thread": "s77"}}
ENDPOINT = "https://push.example.net/wpush/v2/gAAAAABkZ7Q0abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class Target:
    """The PushTarget protocol: what Sender needs of a subscription."""

    id: str
    url: str
    key_id: str
    keys: tuple[ec.EllipticCurvePublicKey, bytes, bytes] | None


class WallClock:
    """IReactorTime.seconds for code that only reads the time."""

    def seconds(self) -> float:
        return time.time()


def subscription() -> tuple[ec.EllipticCurvePrivateKey, str, str]:
    ua = ec.generate_private_key(ec.SECP256R1())
    raw = ua.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return ua, b64url_encode(raw), b64url_encode(os.urandom(16))


def our_path(url: str, p256dh: str, auth: str, clock: Any) -> Callable[[], Any]:
    keyring = KeyRing(clock)
    key = VapidKey.generate()
    keyring.set_current(key)
    sender = Sender(transport=None, keyring=keyring, clock=clock,  # type: ignore[arg-type]
                    config=PushConfig(), metrics=Metrics())
    target = Target("S1", url, key.key_id, ece.parse_subscription_keys(p256dh, auth))
    body = state_change(CHANGED)

    def one() -> Any:
        headers = sender.headers(target, topic_for(target.id))
        assert headers is not None and target.keys is not None
        public, raw, secret = target.keys
        encrypted = ece.encrypt(body, raw, secret, ua_public_key=public)
        return request_headers(headers), BytesProducer(encrypted)

    return one


def pywebpush_path(url: str, p256dh: str, auth: str) -> Callable[[], Any]:
    from py_vapid import Vapid
    from pywebpush import WebPusher

    vapid = Vapid()
    vapid.generate_keys()
    info = {"endpoint": url, "keys": {"p256dh": p256dh, "auth": auth}}
    origin = "https://push.example.net"
    body = json.dumps({"@type": "StateChange", "changed": CHANGED}, separators=(",", ":"))

    def one() -> Any:
        claims = {"sub": "mailto:ops@example.com", "aud": origin,
                  "exp": int(time.time()) + 12 * 3600}
        headers = dict(vapid.sign(claims))
        return WebPusher(info)._prepare_send_data(body, headers, ttl=86400)

    return one


def floor_path(p256dh: str, auth: str) -> Callable[[], bytes]:
    ua_public = b64url_decode(p256dh)
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ua_public)
    secret = b64url_decode(auth)
    plaintext = json.dumps({"@type": "StateChange", "changed": CHANGED},
                           separators=(",", ":")).encode() + b"\x02"
    curve, ecdh = ec.SECP256R1(), ec.ECDH()

    def one() -> bytes:
        eph = ec.generate_private_key(curve)
        as_public = eph.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        shared = eph.exchange(ecdh, ua_key)
        prk_key = hmac.digest(secret, shared, "sha256")
        ikm = hmac.digest(prk_key, b"WebPush: info\x00" + ua_public + as_public + b"\x01",
                          "sha256")
        salt = os.urandom(16)
        prk = hmac.digest(salt, ikm, "sha256")
        cek = hmac.digest(prk, b"Content-Encoding: aes128gcm\x00\x01", "sha256")[:16]
        nonce = hmac.digest(prk, b"Content-Encoding: nonce\x00\x01", "sha256")[:12]
        return AESGCM(cek).encrypt(nonce, plaintext, None)

    return one


def cpu_per_message(fn: Callable[[], Any], count: int, repeats: int) -> float:
    """Best-of-``repeats`` CPU microseconds per call."""
    for _ in range(min(50, count)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time_ns()
        for _ in range(count):
            fn()
        best = min(best, (time.process_time_ns() - start) / count / 1e3)
    return best


def run_cpu(args: argparse.Namespace) -> dict[str, Any]:
    _, p256dh, auth = subscription()
    paths = {"jmappushd": our_path(ENDPOINT, p256dh, auth, WallClock()),
             "floor": floor_path(p256dh, auth)}
    # Without the bench extra (no pywebpush) the comparison is with the floor only.
    with contextlib.suppress(ImportError):
        paths["pywebpush"] = pywebpush_path(ENDPOINT, p256dh, auth)
    result: dict[str, Any] = {name: [] for name in paths}
    for _ in range(args.rounds):  # interleaved, so drift hits all three alike
        for name, fn in paths.items():
            result[name].append(cpu_per_message(fn, args.count, 1))
    return {name: min(values) for name, values in result.items()} | {"samples_us": result}


# bare - ours - ours - bare, then flipped: each side's turns have the same mean position,
# so a drift in the machine's speed hits both alike (any even prefix of four keeps that).
TURNS = ("bare_treq", "jmappushd", "jmappushd", "bare_treq",
         "jmappushd", "bare_treq", "bare_treq", "jmappushd")


def receiver_cpu_ns(pid: int) -> int:
    """The receiver's CPU time so far in ns (0 when no pid is given): which side of the
    loop is saturated explains a rate."""
    return cpu_ns(pid) if pid else 0


def run_deliver(args: argparse.Namespace) -> dict[str, Any]:
    from twisted.internet import defer, task

    out: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        _, p256dh, auth = subscription()
        config = PushConfig()
        agent, pool = build_agent(reactor, allow_private=True, connect_timeout=10.0,
                                  keep_per_host=config.max_in_flight_per_origin)
        keyring = KeyRing(reactor)
        key = VapidKey.generate()
        keyring.set_current(key)
        sender = Sender(AgentTransport(agent, reactor, 10.0), keyring, reactor, config,
                        Metrics())
        # The daemon's caps at their defaults: every POST takes a slot first.
        slots = SlotLimiter(config.max_in_flight, config.max_in_flight_per_origin)
        target = Target("S1", args.url, key.key_id, ece.parse_subscription_keys(p256dh, auth))
        body = state_change(CHANGED)

        async def ours() -> bool:
            with await slots.acquire(slot_key(target.url)):
                result = await sender.send(target, body, "state", topic_for(target.id))
            return result.status in (200, 201, 202)

        import treq
        headers: dict[str | bytes, str | bytes] = {}
        headers.update(sender.headers(target, topic_for(target.id)) or {})
        assert target.keys is not None
        bodies = [ece.encrypt(body, target.keys[1], target.keys[2],
                              ua_public_key=target.keys[0]) for _ in range(64)]
        counter = iter(range(10**9))

        async def bare() -> bool:
            response = await treq.post(args.url, data=bodies[next(counter) % 64],
                                       headers=headers)
            await response.content()
            return int(response.code) in (200, 201, 202)

        # The daemon is offered twice the cap (a fan-out makes more POSTs due than may
        # start) and holds ``concurrency`` in flight; the bare loop holds as many.
        sides = {"bare_treq": (bare, 1), "jmappushd": (ours, 2)}
        seen = dict.fromkeys(sides, 0)
        for side in TURNS[:args.turns]:
            fn, demand = sides[side]
            seen[side] += 1
            before = receiver_cpu_ns(args.receiver_pid)
            result = await _loop(fn, args.count, args.concurrency * demand)
            if args.receiver_pid:
                result["receiver_cpu_us"] = (
                    receiver_cpu_ns(args.receiver_pid) - before) / args.count / 1e3
            out[side if seen[side] == 1 else f"{side}_{seen[side]}"] = result
        await pool.closeCachedConnections()
        emit(out)  # task.react exits the process when main returns

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    return out


def run_daemon(args: argparse.Namespace) -> None:
    """The whole delivery path: ``--count`` verified subscriptions on one receiver in a
    SQLite store, the hub, the ``DeliveryService`` with its caps and its durable records
    (before each POST and after its answer); one publish makes every one due. Per
    round: deliveries per second from the publish to the last answer, and this
    process's CPU per delivery (both threads: the reactor's and the SQL thread's)."""
    from twisted.internet import defer, task

    async def main(reactor: Any) -> None:
        out = await _daemon_rounds(reactor, args)
        emit({"daemon": out})

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


async def _daemon_rounds(reactor: Any, args: argparse.Namespace) -> list[dict[str, float]]:
    import tempfile

    from twisted.internet import defer, task

    from jmappushd.core.hub import Hub
    from jmappushd.store.records import PushDelivery, PushSubscription
    from jmappushd.store.sqlite import SQLiteStore
    from jmappushd.transports.webpush.delivery import DeliveryService
    from jmappushd.transports.webpush.sender import PushResponse

    _, p256dh, auth = subscription()
    store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "push.db"), reactor)
    await store.open()
    user = await store.add_user("bench", "unused")
    account = (await store.accounts_for_user(user.id))[0].id
    token = await store.create_token("bench", b"d" * 32)
    keyring = KeyRing(reactor)
    key = VapidKey.generate()
    keyring.set_current(key)
    config = PushConfig(push_throttle=0)
    agent, pool = build_agent(reactor, allow_private=True, connect_timeout=10.0,
                              keep_per_host=config.max_in_flight_per_origin)
    answered = {"count": 0, "want": 0}
    done: list[defer.Deferred[None]] = []

    class Counting(AgentTransport):
        def post(self, url: str, body: bytes, headers: dict[str, str]
                 ) -> defer.Deferred[PushResponse]:
            def count(response: PushResponse) -> PushResponse:
                answered["count"] += 1
                if answered["count"] == answered["want"]:
                    reactor.callLater(0, done.pop().callback, None)
                return response
            return super().post(url, body, headers).addCallback(count)

    metrics = Metrics()
    sender = Sender(Counting(agent, reactor, 10.0), keyring, reactor, config, metrics)
    hub = Hub(store)
    await hub.start()
    now = reactor.seconds()
    records = [await store.create_push_subscription(PushSubscription(
        id=f"S{i:05d}", user_id=user.id, credential_id=f"token:{token.id}",
        device_client_id="bench", url=f"{args.url}/S{i:05d}", keys_p256dh=p256dh,
        keys_auth=auth, verification_code="unused", verified=True,
        client_verification_code=None, expires=now + 7 * 86400, types=None,
        vapid_key_id=key.key_id, created=now, delivery=PushDelivery(last_sent_seq=0)),
        args.count) for i in range(args.count)]
    delivery = DeliveryService(store, hub, reactor, config, sender, metrics)
    await delivery.start(records)
    out = []
    for r in range(args.rounds):
        answered.update(count=0, want=args.count)
        finished: defer.Deferred[None] = defer.Deferred()
        done.append(finished)
        start, cpu = time.perf_counter(), time.process_time()
        await hub.publish({account: {"Email": f"s{r}"}})
        await finished
        seconds = time.perf_counter() - start
        out.append({"per_s": args.count / seconds,
                    "cpu_us": (time.process_time() - cpu) / args.count * 1e6})
        await task.deferLater(reactor, 0.5, lambda: None)  # the settling records
    await delivery.stop()
    await pool.closeCachedConnections()
    await store.close()
    return out


async def _loop(fn: Callable[[], Any], count: int, concurrency: int) -> dict[str, Any]:
    """``count`` calls of ``fn`` by ``concurrency`` workers: the rate, and this process's
    CPU per call (the client's share of a delivery, steadier than the rate on a shared
    machine)."""
    from twisted.internet import defer

    ok = failed = 0
    remaining = count
    start, cpu = time.perf_counter(), time.process_time()

    async def worker() -> None:
        nonlocal ok, failed, remaining
        while remaining > 0:
            remaining -= 1
            try:
                good = await fn()
            except Exception:
                good = False
            ok, failed = ok + good, failed + (not good)

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)])
    seconds = time.perf_counter() - start
    cpu_us = (time.process_time() - cpu) / count * 1e6
    return {"ok": ok, "failed": failed, "seconds": seconds, "per_s": ok / seconds,
            "cpu_us": cpu_us}


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"type": "result", **result}) + "\n")
    sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=("cpu", "deliver", "daemon"), required=True)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--url", default="")
    p.add_argument("--concurrency", type=int, default=PushConfig().max_in_flight_per_origin,
                   help="POSTs in flight: the daemon's per-origin cap, so both loops hold "
                        "as many")
    p.add_argument("--turns", type=int, default=len(TURNS), choices=(4, 8),
                   help="deliver: loops in all, interleaved, half of them each side's")
    p.add_argument("--receiver-pid", type=int, default=0,
                   help="deliver: the receiver's pid, to report its CPU per delivery")
    args = p.parse_args()
    if args.mode == "cpu":
        emit(run_cpu(args))
    elif args.mode == "daemon":
        run_daemon(args)
    else:
        run_deliver(args)


if __name__ == "__main__":
    main()
