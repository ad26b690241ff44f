"""VAPID key rotations followed by every node (issue 13): two push runtimes on one store
and one Clock stand for two daemons on one database."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger

from jmappushd.auth.authenticator import Principal
from jmappushd.config import Config
from jmappushd.daemon.service import build_app
from jmappushd.store.records import Account, StoreUnavailable
from jmappushd.transports.webpush.keys import META_KEY, VAPID_CAPABILITY
from jmappushd.transports.webpush.keywatch import KEY_POLL_INTERVAL, KeyWatcher
from jmappushd.transports.webpush.service import PushRuntime
from jmappushd.transports.webpush.vapid import VapidKey
from tests.push_fakes import FakeTransport, Harness
from tests.support import no_threads

ALICE = Principal("u1", "alice", "token:T", (Account("A", "alice", True),), "A")


class FakePool:
    def closeCachedConnections(self) -> Deferred[None]:
        return succeed(None)


def node(h: Harness) -> PushRuntime:
    """A started push runtime on the harness's store and clock (one daemon)."""
    config = dataclasses.replace(Config(), push=h.config)
    app = build_app(config, h.clock, h.store, no_threads)
    defer.ensureDeferred(app.hub.start())
    runtime = PushRuntime(app, FakeTransport(), FakePool())  # type: ignore[arg-type]
    runtime.register()
    started = defer.ensureDeferred(runtime.start())
    assert started.called
    return runtime


def advertised(runtime: PushRuntime) -> str:
    key: str = runtime.app.session_for(ALICE)["capabilities"][VAPID_CAPABILITY][
        "applicationServerKey"]
    return key


def two_nodes(**config: Any) -> tuple[Harness, PushRuntime, PushRuntime]:
    h = Harness(**config)
    h.store.set_meta(META_KEY, h.key.to_private_string())
    h.record("S1")  # created under the first key, tracked by both nodes
    return h, node(h), node(h)


def test_rotation_on_one_node_reaches_the_other_within_one_poll() -> None:
    """Rotate on A: B signs with, and its session advertises, the new key after one poll
    interval (its session state changes); B's delivery forgets the destroyed subscription."""
    h, a, b = two_nodes()
    assert b.delivery.get("S1") is not None
    before = b.app.session_for(ALICE)["state"]
    assert defer.ensureDeferred(a.rotate_key()).result == ["S1"]
    new = a.keyring.current
    h.clock.advance(KEY_POLL_INTERVAL - 0.1)
    assert b.keyring.current.key_id == h.key.key_id  # not yet: polls are 2 s apart
    h.clock.advance(0.1)
    assert b.keyring.current.key_id == new.key_id
    assert b.keyring.key_ids == {new.key_id}
    assert advertised(b) == advertised(a) == new.public_key_b64
    assert b.app.session_for(ALICE)["state"] != before
    assert b.delivery.get("S1") is None and a.delivery.get("S1") is None


def test_follower_destroys_what_the_rotating_node_has_not_yet() -> None:
    """Seeing the new key before the rotating node's delete committed: the follower
    destroys the old key's subscriptions itself, so its delivery forgets them at once."""
    h, a, b = two_nodes()
    h.store.set_meta(META_KEY, a.keyring.current.to_private_string())  # same key: no-op
    h.clock.advance(KEY_POLL_INTERVAL)
    assert b.delivery.get("S1") is not None
    # Another process wrote a new key and nothing else yet.
    other = VapidKey.generate()
    h.store.set_meta(META_KEY, other.to_private_string())
    h.clock.advance(KEY_POLL_INTERVAL)
    assert b.keyring.current.key_id == other.key_id
    assert "S1" not in h.store.subs and b.delivery.get("S1") is None


def test_transition_period_is_followed_and_ends_on_every_node() -> None:
    """C-V-2 with vapid-rotation-transition: B keeps signing for the old key's
    subscriptions until the period ends, then drops the key and destroys them."""
    h, a, b = two_nodes(vapid_rotation_transition=600)
    old = h.key.key_id
    assert defer.ensureDeferred(a.rotate_key()).result == []
    h.clock.advance(KEY_POLL_INTERVAL)
    new = a.keyring.current.key_id
    assert b.keyring.current.key_id == new and b.keyring.key_ids == {new, old}
    assert b.delivery.get("S1") is not None
    h.clock.advance(600)
    assert b.keyring.key_ids == {new} and a.keyring.key_ids == {new}
    assert b.delivery.get("S1") is None and "S1" not in h.store.subs


def test_an_unchanged_key_costs_one_read_and_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle: one poll timer and one metadata read per node and interval; the session and
    the ring untouched."""
    h, _, b = two_nodes()
    generation = b.app.registry.generation
    signer = b.keyring.signer(h.key.key_id)
    reads: list[str] = []
    get_meta = h.store.get_meta

    def counted(key: str) -> Deferred[str | None]:
        reads.append(key)
        return get_meta(key)

    monkeypatch.setattr(h.store, "get_meta", counted)
    for _ in range(5):
        h.clock.advance(KEY_POLL_INTERVAL)
    assert reads == [META_KEY] * 10
    assert b.app.registry.generation == generation
    assert b.keyring.signer(h.key.key_id) is signer  # its cached tokens kept
    watches = [c for c in h.clock.getDelayedCalls() if "KeyWatcher" in repr(c)]
    assert len(watches) == 2  # one per node


def test_the_same_key_spelt_differently_is_not_a_rotation() -> None:
    """A stored key with a trailing newline (written by hand) is the same key: the ring and
    its signers stay, the session does not change."""
    h, _, b = two_nodes()
    h.store.set_meta(META_KEY, h.key.to_private_string() + "\n")
    signer = b.keyring.signer(h.key.key_id)
    generation = b.app.registry.generation
    h.clock.advance(KEY_POLL_INTERVAL)
    assert b.keyring.signer(h.key.key_id) is signer
    assert b.app.registry.generation == generation


def test_own_rotation_racing_a_poll_is_not_followed_back() -> None:
    """A poll whose read answered the old key while this node rotated: the lock keeps them
    apart, so the node keeps its new key (no flip back to the old one)."""
    h, a, _ = two_nodes()
    h.store.hold()
    h.clock.advance(KEY_POLL_INTERVAL)  # a's (and b's) poll read is under way
    rotated = defer.ensureDeferred(a.rotate_key())
    h.store.release()
    while not rotated.called:  # each release answers what was asked so far
        h.store.hold()
        h.store.release()
    new = a.keyring.current.key_id
    assert new != h.key.key_id
    h.clock.advance(KEY_POLL_INTERVAL)
    assert a.keyring.current.key_id == new
    assert advertised(a) == a.keyring.current.public_key_b64


def test_a_failing_read_is_logged_once_and_retried() -> None:
    """A poll that cannot read the store logs once per outage and tries again."""
    clock = Clock()
    events: list[dict[str, Any]] = []
    outcomes: list[bool | Exception] = [StoreUnavailable("down"), StoreUnavailable("down"),
                                        False]

    async def follow() -> bool:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    watcher = KeyWatcher(clock, follow, interval=2.0)
    watcher.log = Logger(observer=cast(ILogObserver, events.append))
    watcher.start()
    clock.advance(2.0)
    clock.advance(2.0)
    clock.advance(2.0)
    assert outcomes == []
    assert [e["log_format"].split(" (")[0] for e in events] == [
        "could not check the stored VAPID key", "the stored VAPID key can be checked again"]
    assert watcher.running
    fired = watcher.stop()
    assert fired.called and clock.getDelayedCalls() == []


def test_stop_waits_for_a_poll_under_way() -> None:
    """Stopping during a poll fires only once that poll is done (it may touch the store,
    which closes after the transports)."""
    clock = Clock()
    pending: Deferred[bool] = Deferred()
    watcher = KeyWatcher(clock, lambda: pending, interval=2.0)
    watcher.start()
    clock.advance(2.0)
    stopped = watcher.stop()
    assert not stopped.called
    pending.callback(False)
    assert stopped.called and clock.getDelayedCalls() == []


def test_runtime_stop_stops_the_watcher() -> None:
    """After the runtime stops no poll is left on the clock and a late key is ignored."""
    _, a, b = two_nodes()
    defer.ensureDeferred(b.stop())
    assert not b.keywatch.running
    defer.ensureDeferred(a.rotate_key())
    assert not defer.ensureDeferred(b.follow_rotation()).result
