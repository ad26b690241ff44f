"""The cyclic garbage collector's policy for a process that holds many connections.

CPython scans its young objects every 700 net allocations, moves what survives two
scans to the old generation, and scans the whole heap once a quarter of the old
generation is new. A daemon's heap is mostly its connections (about 37 tracked objects
each), and its transient objects (a publish in flight, a Deferred waiting for a reactor
turn) live just long enough to survive two scans at 700: with 10,000 listeners the
throughput benchmark met a whole-heap scan in most of its runs, 0.4-0.6 s each with the
reactor stopped (study 16). With the young threshold at 50,000, reference counting frees
the transient objects before any scan sees them and whole-heap scans all but stop; what
the larger threshold lets wait (unreachable cycles) is a few megabytes at most.

What is built before the daemon starts (modules, classes, the configuration, the wiring)
lives as long as the process: it is collected once and then frozen (``gc.freeze``) when
the service starts, before the reactor has accepted a connection, so no later scan walks
it again. Connections are never frozen: a closed one may leave a cycle behind.

Collections and the time they take are counted for ``/metrics`` from a ``gc.callbacks``
hook that only reads a clock and adds numbers (it runs in the middle of allocations).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any, Protocol

GENERATIONS = 3


class Collector(Protocol):
    """The part of the ``gc`` module the policy uses (tests hand in a fake)."""

    callbacks: list[Callable[[str, dict[str, Any]], None]]

    def collect(self) -> int: ...
    def freeze(self) -> None: ...
    def get_threshold(self) -> tuple[int, int, int]: ...
    def set_threshold(self, threshold0: int, threshold1: int, threshold2: int) -> None: ...


class GCPolicy:
    """Applied when the daemon starts; removed when it stops.

    ``threshold`` is ``[server] gc-threshold`` (its default lives in the config): net
    allocations of tracked objects between two young-generation scans; 0 leaves
    CPython's own thresholds alone.
    """

    def __init__(self, threshold: int, collector: Collector | None = None,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        if threshold < 0:
            raise ValueError("the young-generation threshold is a count, at least 0")
        self.threshold = threshold
        self._gc: Collector = collector if collector is not None else gc  # type: ignore[assignment]
        self._timer = timer
        self._started: list[float | None] = [None] * GENERATIONS
        self._previous: tuple[int, int, int] | None = None
        self.collections = [0] * GENERATIONS
        self.seconds = [0.0] * GENERATIONS
        self.longest = 0.0  # the longest single collection, s

    def apply(self) -> None:
        """Freeze what is built so far, set the young threshold, start counting."""
        collector = self._gc
        if self.threshold and self._previous is None:  # once until remove()
            collector.collect()  # start-up's own garbage goes before the rest is frozen
            collector.freeze()
            self._previous = collector.get_threshold()
            _, older, oldest = self._previous
            collector.set_threshold(self.threshold, older, oldest)
        if self._observe not in collector.callbacks:
            collector.callbacks.append(self._observe)

    def remove(self) -> None:
        """Stop counting and give the thresholds back (frozen objects stay frozen)."""
        collector = self._gc
        if self._observe in collector.callbacks:
            collector.callbacks.remove(self._observe)
        if self._previous is not None:
            collector.set_threshold(*self._previous)
            self._previous = None

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        generation = info.get("generation")
        if not isinstance(generation, int) or not 0 <= generation < GENERATIONS:
            return
        if phase == "start":
            self._started[generation] = self._timer()
            return
        started, self._started[generation] = self._started[generation], None
        if started is None:
            return  # the hook was added while this collection ran
        took = self._timer() - started
        self.collections[generation] += 1
        self.seconds[generation] += took
        if took > self.longest:
            self.longest = took
