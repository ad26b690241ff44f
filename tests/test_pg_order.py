"""CallOrder, the scheduler behind the PostgreSQL store's ordering guarantees (a) and (c),
driven by a runner whose calls the test finishes by hand, in any order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from jmappushd.store.pgorder import CallOrder


class ManualRunner:
    """Starts nothing by itself: the test finishes each started call when it likes."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._running: dict[str, tuple[Callable[[], Any], Deferred[Any]]] = {}

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        label = work.__name__
        d: Deferred[Any] = Deferred()
        self.started.append(label)
        self._running[label] = (work, d)
        return d

    def finish(self, label: str) -> None:
        work, d = self._running.pop(label)
        try:
            result = work()
        except Exception as exc:
            d.errback(exc)
            return
        d.callback(result)


def call(name: str, value: object = None, error: Exception | None = None
         ) -> Callable[[], object]:
    def work() -> object:
        if error is not None:
            raise error
        return value if value is not None else name

    work.__name__ = name
    return work


def track(d: Deferred[Any], label: str, fired: list[str]) -> None:
    def note(result: object) -> None:
        fired.append(label)

    d.addBoth(note)


def test_reads_run_side_by_side_and_fire_in_call_order() -> None:
    """(a) Reads with no write between them all start; finishing them out of order still
    fires their Deferreds in call order."""
    runner = ManualRunner()
    order = CallOrder(runner, limit=8)
    fired: list[str] = []
    for name in ("r1", "r2", "r3"):
        track(order.read(call(name)), name, fired)
    assert runner.started == ["r1", "r2", "r3"]
    runner.finish("r3")
    runner.finish("r2")
    assert fired == []
    runner.finish("r1")
    assert fired == ["r1", "r2", "r3"]
    assert order.pending == 0


def test_a_read_waits_for_every_earlier_write() -> None:
    """(c) A read called after a write, before the write finished, starts only once the
    write is done (so it sees it), and fires after it."""
    runner = ManualRunner()
    order = CallOrder(runner, limit=8)
    fired: list[str] = []
    track(order.write(call("w1")), "w1", fired)
    track(order.read(call("r1")), "r1", fired)
    assert runner.started == ["w1"]
    runner.finish("w1")
    assert runner.started == ["w1", "r1"]
    runner.finish("r1")
    assert fired == ["w1", "r1"]


def test_a_write_waits_for_every_earlier_call() -> None:
    """Writes run one at a time, each after all earlier reads and writes finished, so
    writes commit in call order."""
    runner = ManualRunner()
    order = CallOrder(runner, limit=8)
    fired: list[str] = []
    track(order.read(call("r1")), "r1", fired)
    track(order.write(call("w1")), "w1", fired)
    track(order.write(call("w2")), "w2", fired)
    track(order.read(call("r2")), "r2", fired)
    assert runner.started == ["r1"]
    runner.finish("r1")
    assert runner.started == ["r1", "w1"]
    runner.finish("w1")
    assert runner.started == ["r1", "w1", "w2"]
    runner.finish("w2")
    runner.finish("r2")
    assert fired == ["r1", "w1", "w2", "r2"]


def test_answers_and_failures_keep_their_turn() -> None:
    """(a) An answer without SQL and a failing call fire in their turn, not ahead."""
    runner = ManualRunner()
    order = CallOrder(runner, limit=8)
    fired: list[str] = []
    failures: list[str] = []
    track(order.read(call("r1")), "r1", fired)
    refused = order.answer(call("bad", error=ValueError("refused")))
    refused.addErrback(lambda f: failures.append(str(f.value)))
    track(refused, "bad", fired)
    broken = order.read(call("r2", error=OSError("lost")))
    broken.addErrback(lambda f: failures.append(str(f.value)))
    track(broken, "r2", fired)
    runner.finish("r2")
    assert fired == []
    runner.finish("r1")
    assert fired == ["r1", "bad", "r2"]
    assert failures == ["refused", "lost"]


def test_limit_bounds_the_calls_running_at_once() -> None:
    """No more than ``limit`` calls run at once; the next starts as one finishes."""
    runner = ManualRunner()
    order = CallOrder(runner, limit=2)
    for name in ("r1", "r2", "r3"):
        order.read(call(name))
    assert runner.started == ["r1", "r2"]
    runner.finish("r2")
    assert runner.started == ["r1", "r2", "r3"]
    with pytest.raises(ValueError):
        CallOrder(runner, limit=0)


def test_calls_made_from_a_callback_keep_order() -> None:
    """A call made while an earlier result is being handed out waits its turn too."""
    runner = ManualRunner()
    order = CallOrder(runner, limit=8)
    fired: list[str] = []

    def chain(result: object) -> object:
        track(order.answer(call("nested")), "nested", fired)
        return result

    first = order.read(call("r1"))
    first.addCallback(chain)
    track(first, "r1", fired)
    track(order.read(call("r2")), "r2", fired)
    runner.finish("r2")
    runner.finish("r1")
    assert fired == ["r1", "r2", "nested"]


def test_drained_fires_once_every_call_fired() -> None:
    """drained() (what close() waits for) fires after the last pending call fired."""
    runner = ManualRunner()
    order = CallOrder(runner, limit=8)
    done: list[bool] = []
    order.drained().addCallback(lambda _: done.append(True))
    assert done == [True]
    order.write(call("w1"))
    order.drained().addCallback(lambda _: done.append(True))
    assert done == [True]
    runner.finish("w1")
    assert done == [True, True]
