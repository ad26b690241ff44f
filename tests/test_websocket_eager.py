"""run_eagerly: a coroutine that never waits needs no Deferred; one that waits is resumed
by Twisted exactly as ensureDeferred would."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from jmappushd.transports.websocket.eager import run_eagerly


async def _now(value: int) -> int:
    return value * 2


async def _waits(gate: defer.Deferred[int], second: defer.Deferred[int]) -> int:
    first = await gate
    return first + await second


async def _fails_after(gate: defer.Deferred[int]) -> int:
    await gate
    raise KeyError("late")


async def _catches(gate: defer.Deferred[int]) -> str:
    try:
        await gate
    except ValueError as exc:
        return f"caught {exc}"
    return "not reached"


async def _fails_now() -> int:
    raise KeyError("early")


def test_finished_coroutine_gives_its_result() -> None:
    """A coroutine that completes without suspending yields its plain result."""
    assert run_eagerly(_now(21)) == 42


def test_waiting_coroutine_gives_a_deferred() -> None:
    """A coroutine that awaits unfired Deferreds becomes a Deferred that fires with its
    result after each awaited Deferred fires (several suspensions)."""
    gate: defer.Deferred[int] = defer.Deferred()
    second: defer.Deferred[int] = defer.Deferred()
    result = run_eagerly(_waits(gate, second))
    assert isinstance(result, defer.Deferred) and not result.called
    gate.callback(1)
    assert not result.called
    second.callback(2)
    assert result.result == 3


def test_failures_reach_the_coroutine_and_the_caller() -> None:
    """A failed awaited Deferred is thrown into the coroutine (which may catch it); an
    exception after a suspension fails the Deferred; one before it is raised at once."""
    gate: defer.Deferred[int] = defer.Deferred()
    caught = run_eagerly(_catches(gate))
    gate.errback(ValueError("boom"))
    assert isinstance(caught, defer.Deferred) and caught.result == "caught boom"
    gate2: defer.Deferred[int] = defer.Deferred()
    failed = run_eagerly(_fails_after(gate2))
    gate2.callback(0)
    assert isinstance(failed, defer.Deferred)
    failure: list[Failure] = []
    failed.addErrback(failure.append)
    assert failure and failure[0].check(KeyError)
    with pytest.raises(KeyError):
        run_eagerly(_fails_now())
