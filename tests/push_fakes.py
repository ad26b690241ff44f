"""Fakes for Clock-driven push delivery tests: a recording memory store, a transport, a
receiver key."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from jmappushd.config import PushConfig
from jmappushd.core.hub import Hub
from jmappushd.metrics import Metrics
from jmappushd.store import MemoryStore
from jmappushd.store.records import PushDelivery, PushSubscription
from jmappushd.transports.webpush.b64 import b64url_encode
from jmappushd.transports.webpush.delivery import DeliveryService
from jmappushd.transports.webpush.ece import public_bytes
from jmappushd.transports.webpush.keys import KeyRing
from jmappushd.transports.webpush.sender import PushResponse, Sender
from jmappushd.transports.webpush.vapid import VapidKey, origin_of
from tests.store_backends import counting_ids, fired
from tests.vapid_check import verify_vapid_header


class PushStore(MemoryStore):
    """The memory store, noting the delivery service's saves and deletes for assertions.

    Users are named by their ids (``u1``...), so a test can make one per id it uses.
    """

    def __init__(self) -> None:
        self._next_ids: dict[str, list[str]] = {"u": [], "t": []}
        count = counting_ids()
        super().__init__(make_id=lambda prefix: (self._next_ids[prefix].pop()
                                                 if self._next_ids.get(prefix)
                                                 else count(prefix)))
        self.open()
        self.saved: list[tuple[str, PushDelivery]] = []
        self.deleted: list[str] = []

    def ensure_user(self, user_id: str, accounts: Sequence[str]) -> None:
        """A user with this id (and name) whose first account is its own and the others
        granted, unless it exists."""
        if fired(self.get_user(user_id)) is None:
            self._next_ids["u"].append(user_id)
            fired(self.add_user(user_id, "", accounts[0]))
        for account_id in accounts[1:]:
            fired(self.grant(user_id, account_id))

    def ensure_token(self, user_id: str, token_id: str) -> None:
        """The user's bearer token with this id, unless it exists."""
        if token_id not in {r.id for r in fired(self.list_tokens(user_id))}:
            self._next_ids["t"].append(token_id)
            fired(self.create_token(user_id, token_id.encode().ljust(32, b"-")))

    @property
    def seq(self) -> int:
        return fired(self.position())[1]

    @property
    def subs(self) -> dict[str, PushSubscription]:
        """The stored subscriptions by id (a snapshot)."""
        return {s.id: s for s in fired(self.all_push_subscriptions())}

    def meta_value(self, key: str) -> str | None:
        return fired(self.get_meta(key))

    def save_push_delivery(self, sub_id: str, delivery: PushDelivery) -> Deferred[bool]:
        self.saved.append((sub_id, delivery))
        return super().save_push_delivery(sub_id, delivery)

    def delete_push_subscription(self, sub_id: str) -> Deferred[bool]:
        self.deleted.append(sub_id)
        return super().delete_push_subscription(sub_id)

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
        self.store = PushStore()
        self.transport = FakeTransport()
        self.keyring = KeyRing(self.clock, "mailto:ops@example.com")
        self.key = VapidKey.generate()
        self.keyring.set_current(self.key)
        self._build()
        self.receiver = Receiver()

    def _build(self) -> None:
        self.metrics = Metrics()
        self.hub = Hub(self.store)
        defer.ensureDeferred(self.hub.start())
        self.sender = Sender(self.transport, self.keyring, self.clock, self.config, self.metrics)
        self.delivery = DeliveryService(self.store, self.hub, self.clock,
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
        self.store.ensure_user(user, accounts)
        record = PushSubscription(
            id=sub_id, user_id=user, credential_id="token:T" if user == "u1" else f"token:T-{user}",
            device_client_id="d",
            url=f"https://push.example/{sub_id}",
            keys_p256dh=self.receiver.p256dh if keys else None,
            keys_auth=self.receiver.auth_b64 if keys else None,
            verification_code="secret-code", verified=verified, client_verification_code=None,
            expires=self.clock.seconds() + 7 * 86400, types=None, vapid_key_id=self.key.key_id,
            created=self.clock.seconds(), delivery=PushDelivery(last_sent_seq=self.store.seq))
        record = dataclasses.replace(record, **changes)
        if record.credential_id.startswith("token:"):
            self.store.ensure_token(user, record.credential_id.removeprefix("token:"))
        fired(self.store.create_push_subscription(record, 1_000_000))
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
