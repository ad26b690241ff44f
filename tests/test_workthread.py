"""The one-thread FIFO worker the SQLite store runs on (jmappushd.workthread)."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IReactorFromThreads

from jmappushd.workthread import WorkThread

reactor = IReactorFromThreads(_reactor)


class Owning(WorkThread):
    """Records on which thread it finished, as the SQLite thread closes its connection."""

    finished_on: str | None = None

    def _finish(self) -> None:
        self.finished_on = threading.current_thread().name


@pytest_twisted.ensureDeferred
async def test_jobs_run_in_order_on_one_thread_then_it_finishes_there() -> None:
    worker = Owning(reactor, "test-worker")
    seen: list[tuple[int, str]] = []

    def job(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i

    results = [worker.call(job, i) for i in range(50)]
    assert [await r for r in results] == list(range(50))
    assert seen == [(i, "test-worker") for i in range(50)]
    await worker.stop()
    assert worker.finished_on == "test-worker"


@pytest_twisted.ensureDeferred
async def test_a_failing_job_fails_its_deferred_only() -> None:
    worker = WorkThread(reactor, "test-worker")

    def boom() -> None:
        raise ValueError("boom")

    failed = worker.call(boom)
    after = worker.call(lambda: "still working")
    with pytest.raises(ValueError, match="boom"):
        await failed
    assert await after == "still working"
    await worker.stop()


@pytest_twisted.ensureDeferred
async def test_stop_runs_queued_jobs_first_and_later_jobs_fail_at_once() -> None:
    worker = WorkThread(reactor, "test-worker")
    queued = worker.call(lambda: "queued")
    stopped = worker.stop()
    late = worker.call(lambda: "late")
    assert late.called  # refused at once: nothing would ever run it
    with pytest.raises(RuntimeError, match="test-worker is stopped"):
        await late
    assert await queued == "queued"
    await stopped
    assert worker.stop() is stopped  # stopping twice waits for the same end


@pytest_twisted.ensureDeferred
async def test_a_worker_that_never_ran_a_job_stops_at_once_without_a_thread() -> None:
    worker = Owning(reactor, "test-idle-worker")
    stopped = worker.stop()
    assert stopped.called and worker.finished_on is None
    assert "test-idle-worker" not in {t.name for t in threading.enumerate()}
    await stopped


@pytest_twisted.ensureDeferred
async def test_a_failing_finish_fails_the_stop() -> None:
    class Broken(WorkThread):
        def _finish(self) -> None:
            raise OSError("close failed")

    worker = Broken(reactor, "test-worker")
    assert await worker.call(lambda: 1) == 1
    with pytest.raises(OSError, match="close failed"):
        await worker.stop()
