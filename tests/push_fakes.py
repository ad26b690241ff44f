"""Fakes for Clock-driven push delivery tests: a store, a transport, a receiver key."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from jmappushd.config import PushConfig
from jmappushd.core.hub import Hub
from jmappushd.metrics import Metrics
from jmappushd.store.records import Account, PushDelivery, PushSubscription
from jmappushd.transports.webpush.b64 import b64url_encode
from jmappushd.transports.webpush.delivery import DeliveryService
from jmappushd.transports.webpush.ece import public_bytes
from jmappushd.transports.webpush.keys import KeyRing
from jmappushd.transports.webpush.sender import PushResponse, Sender
from jmappushd.transports.webpush.vapid import VapidKey, origin_of, verify_vapid_header


class FakeStore:
    """The store calls the delivery service and the hub make, answered synchronously."""

    def __init__(self) -> None:
        self.seq = 0
        self.states: dict[tuple[str, str], tuple[str, int]] = {}
        self.accounts: dict[str, list[str]] = {}
        self.subs: dict[str, PushSubscription] = {}
        self.saved: list[tuple[str, PushDelivery]] = []
        self.deleted: list[str] = []
        self.meta: dict[str, str] = {}

    def get_meta(self, key: str) -> Deferred[str | None]:
        return succeed(self.meta.get(key))

    def set_meta(self, key: str, value: str) -> Deferred[None]:
        self.meta[key] = value
        return succeed(None)

    def push_subscriptions_for(self, credential_id: str) -> Deferred[list[PushSubscription]]:
        return succeed([s for s in self.subs.values() if s.credential_id == credential_id])

    def all_push_subscriptions(self) -> Deferred[list[PushSubscription]]:
        return succeed(list(self.subs.values()))

    def delete_push_subscriptions_except_keys(self, key_ids: Collection[str]
                                              ) -> Deferred[list[str]]:
        gone = [s.id for s in self.subs.values() if s.vapid_key_id not in key_ids]
        for sub_id in gone:
            del self.subs[sub_id]
        return succeed(gone)

    def position(self) -> Deferred[tuple[str, int]]:
        return succeed(("e1", self.seq))

    def record_changes(self, changed: Mapping[str, Mapping[str, str]]) -> Deferred[int]:
        self.seq += 1
        for account, types in changed.items():
            for type_name, state in types.items():
                self.states[(account, type_name)] = (state, self.seq)
        return succeed(self.seq)

    def record_changes_batch(self, batch: list[Mapping[str, Mapping[str, str]]]
                             ) -> Deferred[list[int]]:
        return succeed([self.record_changes(changed).result for changed in batch])

    def changes_since(self, seq: int, account_ids: Collection[str]
                      ) -> Deferred[dict[str, dict[str, str]]]:
        out: dict[str, dict[str, str]] = {}
        for (account, type_name), (state, at) in self.states.items():
            if account in account_ids and at > seq:
                out.setdefault(account, {})[type_name] = state
        return succeed(out)

    def accounts_for_user(self, user_id: str) -> Deferred[list[Account]]:
        return succeed([Account(a, a, True) for a in self.accounts.get(user_id, [])])

    def save_push_delivery(self, sub_id: str, delivery: PushDelivery) -> Deferred[bool]:
        self.saved.append((sub_id, delivery))
        if sub_id in self.subs:
            self.subs[sub_id] = dataclasses.replace(self.subs[sub_id], delivery=delivery)
        return succeed(sub_id in self.subs)

    def delete_push_subscription(self, sub_id: str) -> Deferred[bool]:
        self.deleted.append(sub_id)
        return succeed(self.subs.pop(sub_id, None) is not None)

    def push_subscription_ids(self) -> Deferred[set[str]]:
        return succeed(set(self.subs))

    def last_saved(self, sub_id: str) -> PushDelivery:
        return [d for s, d in self.saved if s == sub_id][-1]


@dataclass
class Call:
    url: str
    body: bytes
    headers: dict[str, str]
    d: Deferred[PushResponse]

    def answer(self, code: int, retry_after: str | None = None) -> None:
        self.d.callback(PushResponse(code, retry_after))


@dataclass
class FakeTransport:
    """Records every POST and hands back a Deferred the test fires."""

    calls: list[Call] = field(default_factory=list)

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Deferred[PushResponse]:
        d: Deferred[PushResponse] = Deferred()
        self.calls.append(Call(url, body, headers, d))
        return d

    def pop(self) -> Call:
        assert self.calls, "no POST was made"
        return self.calls.pop(0)


class Receiver:
    """A user agent's key pair; decrypts bodies with the independent http_ece package."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.auth = b"0123456789abcdef"
        self.p256dh = b64url_encode(public_bytes(self.private.public_key()))
        self.auth_b64 = b64url_encode(self.auth)

    def decrypt(self, body: bytes) -> Any:
        return json.loads(http_ece.decrypt(body, private_key=self.private,
                                           auth_secret=self.auth, version="aes128gcm"))


def push_config(**changes: Any) -> PushConfig:
    defaults: dict[str, Any] = {
        "push_attempts_max": 3, "push_attempt_interval": 10_000, "push_retry_interval": 1_000,
        "push_throttle": 5_000, "push_verify_timeout": 60_000, "failing_give_up": 3600,
    }
    defaults.update(changes)
    return PushConfig(**defaults)


class Harness:
    """A DeliveryService on a Clock, a fake store and transport, ready to publish to."""

    def __init__(self, jitter: Callable[[], float] = lambda: 0.0, **config: Any) -> None:
        self.jitter = jitter  # 0.0: every back-off is half its nominal delay, deterministic
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = push_config(**config)
        self.store = FakeStore()
        self.transport = FakeTransport()
        self.keyring = KeyRing(self.clock, "mailto:ops@example.com")
        self.key = VapidKey.generate()
        self.keyring.set_current(self.key)
        self._build()
        self.receiver = Receiver()

    def _build(self) -> None:
        self.metrics = Metrics()
        self.hub = Hub(self.store)  # type: ignore[arg-type]
        defer.ensureDeferred(self.hub.start())
        self.sender = Sender(self.transport, self.keyring, self.clock, self.config, self.metrics)
        self.delivery = DeliveryService(self.store, self.hub, self.clock,  # type: ignore[arg-type]
                                        self.config, self.sender, self.metrics,
                                        jitter=self.jitter)

    def crash_and_restart(self) -> None:
        """Abandon the service without any shutdown work; start a new one on the store.

        A dead process keeps no timer: every delayed call on the clock goes with it."""
        for call in self.clock.getDelayedCalls():
            call.cancel()
        self.transport.calls.clear()
        self._build()
        self.start(*self.store.subs.values())

    def record(self, sub_id: str = "S1", *, verified: bool = True, keys: bool = True,
               user: str = "u1", accounts: tuple[str, ...] = ("A",), **changes: Any
               ) -> PushSubscription:
        self.store.accounts[user] = list(accounts)
        record = PushSubscription(
            id=sub_id, user_id=user, credential_id="token:T", device_client_id="d",
            url=f"https://push.example/{sub_id}",
            keys_p256dh=self.receiver.p256dh if keys else None,
            keys_auth=self.receiver.auth_b64 if keys else None,
            verification_code="secret-code", verified=verified, client_verification_code=None,
            expires=self.clock.seconds() + 7 * 86400, types=None, vapid_key_id=self.key.key_id,
            created=self.clock.seconds(), delivery=PushDelivery(last_sent_seq=self.store.seq))
        record = dataclasses.replace(record, **changes)
        self.store.subs[record.id] = record
        return record

    def start(self, *records: PushSubscription) -> None:
        done = defer.ensureDeferred(self.delivery.start(list(records)))
        assert done.called, "start must finish synchronously with the fake store"

    def publish(self, changed: Mapping[str, Mapping[str, str]]) -> None:
        defer.ensureDeferred(self.hub.publish(changed))

    def decrypt(self, call: Call) -> Any:
        claims = verify_vapid_header(call.headers["Authorization"], self.clock.seconds(),
                                     audience=origin_of(call.url))
        assert claims["sub"] == "mailto:ops@example.com"
        return self.receiver.decrypt(call.body)

    def tick_until(self, seconds: float) -> None:
        """Advance the clock in scheduler ticks."""
        step = self.config.push_retry_interval_s
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value
