"""The garbage collector's policy (jmappushd/daemon/gcpolicy.py), against a fake ``gc``."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from jmappushd import tap
from jmappushd.config import ConfigError, parse_config
from jmappushd.daemon.gcpolicy import GCPolicy
from jmappushd.daemon.listeners import ListenerService
from jmappushd.metrics import Metrics
from tests.test_daemon_wiring import build
from tests.test_tap import parsed_options


class FakeGC:
    """Records the calls the policy makes, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threshold = (700, 10, 10)
        self.callbacks: list[Any] = []

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, threshold0: int, threshold1: int, threshold2: int) -> None:
        self.calls.append(f"threshold {threshold0} {threshold1} {threshold2}")
        self.threshold = (threshold0, threshold1, threshold2)


class Ticks:
    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0)


def test_apply_collects_then_freezes_then_raises_only_the_young_threshold() -> None:
    """Start-up's garbage goes first (a frozen cycle is never freed), then the rest is
    frozen; the older generations keep CPython's thresholds."""
    fake = FakeGC()
    policy = GCPolicy(50_000, fake)
    policy.apply()
    assert fake.calls == ["collect", "freeze", "threshold 50000 10 10"]
    assert fake.callbacks == [policy._observe]
    policy.apply()  # a second apply neither freezes again nor adds a second hook
    assert fake.calls == ["collect", "freeze", "threshold 50000 10 10"]
    assert fake.callbacks == [policy._observe]
    policy.remove()  # and CPython's thresholds are still the ones given back
    assert fake.threshold == (700, 10, 10)


def test_remove_gives_the_thresholds_back_and_stops_counting() -> None:
    fake = FakeGC()
    policy = GCPolicy(20_000, fake)
    policy.apply()
    policy.remove()
    assert fake.threshold == (700, 10, 10)
    assert fake.callbacks == []
    policy.remove()  # idempotent
    assert fake.threshold == (700, 10, 10)


def test_threshold_zero_leaves_cpython_alone_but_still_counts() -> None:
    fake = FakeGC()
    policy = GCPolicy(0, fake)
    policy.apply()
    assert fake.calls == []
    assert fake.callbacks == [policy._observe]
    policy.remove()
    assert fake.calls == [] and fake.callbacks == []


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 0"):
        GCPolicy(-1, FakeGC())


def test_collections_are_counted_and_timed_per_generation() -> None:
    policy = GCPolicy(0, FakeGC(), timer=Ticks(1.0, 1.25, 5.0, 5.5, 7.0, 7.125))
    observe = policy._observe
    observe("start", {"generation": 2})
    observe("stop", {"generation": 2, "collected": 3, "uncollectable": 0})
    observe("start", {"generation": 0})
    observe("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    observe("start", {"generation": 0})
    observe("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    assert policy.collections == [2, 0, 1]
    assert policy.seconds == [0.625, 0.0, 0.25]
    assert policy.longest == 0.5


def test_a_stop_without_its_start_or_an_odd_generation_is_ignored() -> None:
    """The hook may be added while a collection runs; it never raises mid-allocation."""
    policy = GCPolicy(0, FakeGC(), timer=Ticks())
    policy._observe("stop", {"generation": 1, "collected": 0})
    policy._observe("start", {"generation": 7})
    policy._observe("start", {})
    assert policy.collections == [0, 0, 0] and policy.longest == 0.0


def test_the_real_collector_reports_to_the_hook() -> None:
    """With CPython's gc: a collection of generation 1 is counted (no freeze here, the
    test process must keep its own policy)."""
    policy = GCPolicy(0)
    policy.apply()
    try:
        gc.collect(1)
    finally:
        policy.remove()
    assert policy.collections[1] >= 1
    assert policy.seconds[1] >= 0.0
    assert policy._observe not in gc.callbacks


def test_metrics_export_collections_time_and_the_longest() -> None:
    metrics = Metrics()
    policy = GCPolicy(0, FakeGC())
    policy.collections[:] = [4, 2, 1]
    policy.seconds[:] = [0.5, 0.25, 0.75]
    policy.longest = 0.75
    metrics.track_gc(policy)
    text = metrics.render().decode()
    assert 'jmappushd_gc_collections_total{generation="2"} 1.0' in text
    assert 'jmappushd_gc_seconds_total{generation="0"} 0.5' in text
    assert "jmappushd_gc_longest_seconds 0.75" in text


def test_the_service_applies_the_policy_before_its_children_start_and_removes_it_at_stop(
        tmp_path: Path) -> None:
    """Applied in startService before any child starts (no listener has accepted a
    connection, so none is frozen), exported at once, removed at stop."""
    service, rec, _, _, _ = build(tmp_path)
    fake = FakeGC()
    service.app.metrics = Metrics()
    service.use_gc_policy(GCPolicy(30_000, fake))
    assert b"jmappushd_gc_collections" in service.app.metrics.render()

    def start_core() -> None:
        rec.events.append(f"core starts after: {fake.calls}")

    service.core.startService = start_core  # type: ignore[method-assign]
    service.startService()
    assert fake.calls == ["collect", "freeze", "threshold 30000 10 10"]
    assert rec.events[0] == "core starts after: ['collect', 'freeze', 'threshold 30000 10 10']"
    service.stopService()
    assert fake.threshold == (700, 10, 10) and fake.callbacks == []


def test_config_key_default_bounds_and_error() -> None:
    assert parse_config("", "x.ini").server.gc_threshold == 50_000
    assert parse_config("[server]\ngc-threshold = 0\n", "x.ini").server.gc_threshold == 0
    with pytest.raises(ConfigError, match=r"x\.ini.*\[server\].*gc-threshold"):
        parse_config("[server]\ngc-threshold = -5\n", "x.ini")
    with pytest.raises(ConfigError, match=r"x\.ini.*\[server\].*gc-threshold"):
        parse_config("[server]\ngc-threshold = lots\n", "x.ini")


def test_the_twistd_entry_point_hands_the_configured_policy_to_the_service(
        tmp_path: Path) -> None:
    service = tap.makeService(parsed_options(tmp_path, "gc-threshold = 12345\n"))
    try:
        assert service.gc_policy is not None  # type: ignore[attr-defined]
        assert service.gc_policy.threshold == 12345  # type: ignore[attr-defined]
    finally:
        for child in service:  # type: ignore[attr-defined]
            if isinstance(child, ListenerService):
                child.stopService()
