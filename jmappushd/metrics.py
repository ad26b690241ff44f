"""Prometheus metrics, kept in a registry per daemon (so tests never share state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class Tally:
    """A counter for per-event hot paths: a plain int, read at scrape time.

    A prometheus ``Counter`` takes a lock on every ``inc``; a fan-out to ten
    thousand connections bumps this ten thousand times, always from the reactor
    thread, which is also the thread that renders ``/metrics``.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class TallyFamily:
    """A labelled family of :class:`Tally` exported as one Prometheus counter."""

    def __init__(self, name: str, documentation: str, label: str,
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._tallies: dict[str, Tally] = {}
        registry.register(self)

    def labels(self, value: str) -> Tally:
        tally = self._tallies.get(value)
        if tally is None:
            tally = self._tallies[value] = Tally()
        return tally

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, tally in sorted(self._tallies.items()):
            family.add_metric([value], tally.value)
        yield family


class ObservedCounter:
    """A counter whose value another object keeps (read at scrape time)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int],
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation)
        family.add_metric([], self._read())
        yield family


class GCCounts(Protocol):
    """What the garbage collector did so far (``jmappushd.daemon.gcpolicy.GCPolicy``)."""

    @property
    def collections(self) -> Sequence[int]: ...  # per generation

    @property
    def seconds(self) -> Sequence[float]: ...  # per generation

    @property
    def longest(self) -> float: ...  # the longest single collection, s


class _GCCollector:
    """Collections per generation, the time they took, and the longest one."""

    def __init__(self, counts: GCCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts
        done = CounterMetricFamily("jmappushd_gc_collections",
                                   "Garbage collections, by generation", labels=["generation"])
        took = CounterMetricFamily("jmappushd_gc_seconds",
                                   "Time the process stood still collecting garbage, s",
                                   labels=["generation"])
        for generation, (n, s) in enumerate(zip(counts.collections, counts.seconds,
                                                strict=True)):
            done.add_metric([str(generation)], n)
            took.add_metric([str(generation)], s)
        longest = GaugeMetricFamily("jmappushd_gc_longest_seconds",
                                    "The longest single garbage collection so far, s",
                                    value=counts.longest)
        yield from (done, took, longest)


class Metrics:
    """Every metric the daemon exports on the admin listener's ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "jmappushd_http_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.api_errors = Counter(
            "jmappushd_api_errors", "JMAP request-level and method errors", ["type"], registry=r
        )
        self.method_calls = Counter(
            "jmappushd_method_calls", "JMAP method calls processed", ["transport"], registry=r
        )
        self.publishes = Counter("jmappushd_publishes", "Accepted publishes", registry=r)
        self.state_changes = Counter(
            "jmappushd_state_changes", "Account/type states recorded by publishes", registry=r
        )
        self.listeners = Gauge(
            "jmappushd_listeners", "Listeners connected to the hub", ["kind"], registry=r
        )
        self.events_sent = TallyFamily(
            "jmappushd_events_sent", "StateChange events written to clients", "transport", r
        )
        self.push_deliveries = Counter(
            "jmappushd_push_deliveries", "Web Push POSTs by outcome", ["kind", "outcome"],
            registry=r,
        )
        self.push_retries = Counter("jmappushd_push_retries", "Web Push retries", registry=r)
        self.push_dropped = Counter(
            "jmappushd_push_dropped", "Web Push notifications given up", ["reason"], registry=r
        )
        self.push_latency = Histogram(
            "jmappushd_push_delivery_seconds", "Web Push POST round trip", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.logins_refused = Counter(
            "jmappushd_logins_refused",
            "Logins refused without checking the password (throttled: 429, busy: 503)",
            ["reason"], registry=r,
        )
        self.push_subscriptions = Gauge(
            "jmappushd_push_subscriptions", "Push subscriptions by state", ["state"], registry=r
        )

    def track_kdf(self, running: Callable[[], int], queued: Callable[[], int],
                  computed: Callable[[], int], shared: Callable[[], int]) -> None:
        """Export the password-check limiter's state (read at scrape time)."""
        r = self.registry
        Gauge("jmappushd_kdf_running", "Password KDFs computing now",
              registry=r).set_function(running)
        Gauge("jmappushd_kdf_queued", "Password checks waiting for a KDF slot",
              registry=r).set_function(queued)
        ObservedCounter("jmappushd_kdf_computed", "Password KDFs computed", computed, r)
        ObservedCounter("jmappushd_kdf_shared",
                        "Password checks answered by a concurrent identical check", shared, r)

    def track_leases(self, held: Callable[[], int], live_nodes: Callable[[], int]) -> None:
        """Export cluster mode's push delivery leases (read at scrape time)."""
        r = self.registry
        Gauge("jmappushd_push_buckets_held",
              "Push subscription buckets this node delivers (of 256)",
              registry=r).set_function(held)
        Gauge("jmappushd_cluster_nodes", "Live nodes at this node's last lease renewal",
              registry=r).set_function(live_nodes)

    def track_unfolded(self, unfolded: Callable[[], int]) -> None:
        """Export how many changes of the PostgreSQL log wait to be folded into ``states``
        (a growing figure means folds fail: catch-ups stay exact, memory grows)."""
        Gauge("jmappushd_store_unfolded_changes",
              "Changes this node holds that the states table may not have yet",
              registry=self.registry).set_function(unfolded)

    def track_gc(self, counts: GCCounts) -> None:
        """Export the garbage collector's work per generation (read at scrape time)."""
        self.registry.register(_GCCollector(counts))

    def track_listeners(self, kind: str, count: Callable[[], int]) -> None:
        """Export a live listener count computed at scrape time."""
        self.listeners.labels(kind).set_function(count)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
