"""A thread runner whose work waits until the test runs it (for the KDF limiter tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer


@dataclass
class Job:
    f: Callable[..., Any]
    args: tuple[Any, ...]
    done: defer.Deferred[Any] = field(default_factory=defer.Deferred)

    def run(self) -> None:
        """Compute in the test's thread and fire, as the pool would once done."""
        try:
            result = self.f(*self.args)
        except Exception as exc:
            self.done.errback(exc)
        else:
            self.done.callback(result)


class HeldThreads:
    """Collects work handed to "threads"; nothing runs until the test says so."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.calls = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        self.calls += 1
        job = Job(f, args)
        self.jobs.append(job)
        return job.done

    def run_next(self) -> None:
        self.jobs.pop(0).run()

    def run_all(self) -> None:
        while self.jobs:
            self.run_next()
