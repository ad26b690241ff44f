"""Running a coroutine without Deferred machinery when it never has to wait.

Most JMAP methods (``Core/echo``, a cached ``PushSubscription/get``) finish without
awaiting anything; wrapping each in ``ensureDeferred`` plus a callback costs more
than the method itself on a WebSocket round trip. :func:`run_eagerly` steps the
coroutine once; only if it suspends is the rest handed to Twisted, which resumes it
exactly as ``ensureDeferred`` would have (the awaited Deferred is passed through).
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

from twisted.internet import defer

T = TypeVar("T")


def run_eagerly(coro: Coroutine[Any, Any, T]) -> T | defer.Deferred[T]:
    """The result if ``coro`` finished at once, else a Deferred of it.

    Exceptions raised before the first suspension propagate to the caller. Not for
    coroutines whose result may itself be a Deferred (the caller could not tell).
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    return defer.ensureDeferred(_finish(coro, yielded))


async def _finish(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    result: T = await _Continue(coro, yielded)
    return result


class _Continue:
    """An awaitable that re-yields what ``coro`` yields, so Twisted's driver runs it."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # a failed Deferred, or cancellation: pass it on
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
