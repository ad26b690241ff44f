"""The push runtime on a Clock: VAPID key life cycle, capability, start and stop (SES-15/16,
PS-24, VAPID-11, VAPID-13)."""

from __future__ import annotations

import dataclasses

from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from jmappushd.auth.authenticator import Principal
from jmappushd.config import Config
from jmappushd.daemon.service import build_app
from jmappushd.jmap.registry import CallContext, MethodError
from jmappushd.store.records import Account
from jmappushd.transports.webpush.keys import META_KEY, VAPID_CAPABILITY
from jmappushd.transports.webpush.service import PushRuntime
from jmappushd.transports.webpush.vapid import VapidKey
from tests.push_fakes import FakeTransport, Harness, PushStore
from tests.support import no_threads

ALICE = Principal("u1", "alice", "token:T", (Account("A", "alice", True),), "A")


class FakePool:
    closed = False

    def closeCachedConnections(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


def runtime_on(h: Harness, store: PushStore | None = None) -> tuple[PushRuntime, FakePool]:
    config = dataclasses.replace(Config(), push=h.config)
    app = build_app(config, h.clock, store or h.store, no_threads)
    defer.ensureDeferred(app.hub.start())
    pool = FakePool()
    runtime = PushRuntime(app, FakeTransport(), pool)  # type: ignore[arg-type]
    runtime.register()
    return runtime, pool


def test_key_created_once_persisted_and_advertised() -> None:
    """VAPID-11, SES-15: the first start creates and stores a key and advertises its public
    half; a later start loads the same key."""
    h = Harness()
    runtime, _ = runtime_on(h)
    assert VAPID_CAPABILITY not in runtime.app.registry.capabilities()
    defer.ensureDeferred(runtime.start())
    stored = h.store.meta_value(META_KEY)
    assert stored is not None
    key = VapidKey.from_private_string(stored).public_key_b64
    session = runtime.app.session_for(ALICE)
    assert session["capabilities"][VAPID_CAPABILITY] == {"applicationServerKey": key}
    again, _ = runtime_on(h)
    defer.ensureDeferred(again.start())
    assert again.keyring.current.public_key_b64 == key
    assert h.store.meta_value(META_KEY) == stored


def test_subscriptions_of_another_key_are_destroyed_at_start() -> None:
    """PS-24, VAPID-13 (C-V-2 without transition): subscriptions tied to a key that is no
    longer the daemon's are destroyed."""
    h = Harness()
    h.store.set_meta(META_KEY, h.key.to_private_string())
    h.record("S1")
    h.record("S2", vapid_key_id="old")
    runtime, _ = runtime_on(h)
    defer.ensureDeferred(runtime.start())
    assert set(h.store.subs) == {"S1"}
    assert runtime.delivery.get("S1") is not None and runtime.delivery.get("S2") is None


def test_rotation_changes_session_state_and_destroys_old_subscriptions() -> None:
    """SES-16, VAPID-13: rotating the key advertises the new key, changes the session state
    and destroys subscriptions created under the old key."""
    h = Harness()
    h.store.set_meta(META_KEY, h.key.to_private_string())
    h.record("S1")
    runtime, _ = runtime_on(h)
    defer.ensureDeferred(runtime.start())
    before = runtime.app.session_for(ALICE)
    gone = defer.ensureDeferred(runtime.rotate_key())
    assert gone.result == ["S1"]
    after = runtime.app.session_for(ALICE)
    assert after["state"] != before["state"]
    new_key = after["capabilities"][VAPID_CAPABILITY]["applicationServerKey"]
    assert new_key == runtime.keyring.current.public_key_b64 != h.key.public_key_b64
    assert runtime.delivery.get("S1") is None and h.store.subs == {}


def test_stop_closes_the_pool_and_leaves_no_timers() -> None:
    """Shutdown: the scheduler stops, the pool is closed, nothing stays on the clock."""
    h = Harness()
    h.store.set_meta(META_KEY, h.key.to_private_string())
    h.record("S1")
    runtime, pool = runtime_on(h)
    defer.ensureDeferred(runtime.start())
    # The subscription's expiry deadline and the VAPID key watcher's poll (issue 13).
    assert len(h.clock.getDelayedCalls()) == 2
    defer.ensureDeferred(runtime.stop())
    assert pool.closed
    assert h.clock.getDelayedCalls() == []


def test_methods_wait_for_start_and_fail_cleanly_if_it_failed() -> None:
    """Calls arriving before the key is loaded wait; if start failed they get
    serverUnavailable instead of hanging."""
    h = Harness()
    runtime, _ = runtime_on(h)
    ctx = CallContext(principal=ALICE, session_state="s")
    waiting = defer.ensureDeferred(runtime.methods.handle_get(ctx, {}))
    assert not waiting.called
    defer.ensureDeferred(runtime.start())
    assert waiting.called and waiting.result == {"list": [], "notFound": []}
    broken, _ = runtime_on(h)
    pending = defer.ensureDeferred(broken.methods.handle_get(ctx, {}))
    broken.start_failed(Failure(RuntimeError("disk on fire")))
    failure = pending.result
    assert isinstance(failure, Failure) and isinstance(failure.value, MethodError)
    assert failure.value.type == "serverUnavailable"
    pending.addErrback(lambda _: None)


def test_rotation_with_transition_keeps_old_subscriptions_until_the_end() -> None:
    """C-V-2, VAPID-13, PS-24: with vapid-rotation-transition the old key's subscriptions
    survive the rotation and are still signed with the old key; when the period ends they
    are destroyed and the old key is erased from the store."""
    from jmappushd.transports.webpush.keys import META_PREVIOUS_KEY

    h = Harness(vapid_rotation_transition=100)
    h.store.set_meta(META_KEY, h.key.to_private_string())
    h.record("S1")
    runtime, _ = runtime_on(h)
    defer.ensureDeferred(runtime.start())
    gone = defer.ensureDeferred(runtime.rotate_key())
    assert gone.result == []
    assert runtime.keyring.current.key_id != h.key.key_id
    assert runtime.keyring.signer(h.key.key_id) is not None  # still signing for S1
    assert set(h.store.subs) == {"S1"} and h.store.meta_value(META_PREVIOUS_KEY)
    h.clock.advance(99)
    assert set(h.store.subs) == {"S1"}
    h.clock.advance(1)
    assert h.store.subs == {} and runtime.delivery.get("S1") is None
    assert runtime.keyring.signer(h.key.key_id) is None
    assert h.store.meta_value(META_PREVIOUS_KEY) == ""


def rotated_with_transition_then_stopped() -> Harness:
    """A daemon with subscription S1 rotates its key with a 100 s transition, then stops."""
    h = Harness(vapid_rotation_transition=100)
    h.store.set_meta(META_KEY, h.key.to_private_string())
    h.record("S1")
    runtime, _ = runtime_on(h)
    defer.ensureDeferred(runtime.start())
    defer.ensureDeferred(runtime.rotate_key())
    defer.ensureDeferred(runtime.stop())
    return h


def test_transition_survives_a_restart_and_ends_on_time() -> None:
    """A restart during the transition keeps the old key for its subscriptions and still
    ends the transition at the recorded time."""
    h = rotated_with_transition_then_stopped()
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(40)
    again, _ = runtime_on(h)
    defer.ensureDeferred(again.start())
    assert set(h.store.subs) == {"S1"}
    assert again.keyring.signer(h.key.key_id) is not None
    h.clock.advance(60)
    assert h.store.subs == {}
    assert again.keyring.signer(h.key.key_id) is None


def test_restart_after_the_transition_destroys_old_subscriptions() -> None:
    """A daemon that was down when the transition ended destroys the old key's
    subscriptions at start."""
    h = rotated_with_transition_then_stopped()
    h.clock.advance(500)
    again, _ = runtime_on(h)
    defer.ensureDeferred(again.start())
    assert h.store.subs == {}
    assert again.keyring.signer(h.key.key_id) is None
