"""One thread that runs jobs first in, first out and hands each result to the reactor.

Work that must leave the reactor thread in call order (the SQLite store's SQL) goes here
rather than through Twisted's thread pool: a job is one ``SimpleQueue.put`` and its result one
``callFromThread``, without the pool's coordinator and context tracking, Python that
holds the GIL the reactor thread needs (study 13 measured half the CPU per round trip).
Results come back in the order the jobs went in.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[Deferred[object], Callable[..., object], tuple[object, ...]]
_STOP = None


class WorkThread:
    """Runs jobs on one daemon thread, started by the first job; ``stop`` ends it after
    the jobs queued before it. Subclasses release what the thread owns in
    :meth:`_finish`."""

    def __init__(self, reactor: IReactorFromThreads, name: str) -> None:
        self._reactor = reactor
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # A daemon thread: a process that exits without stopping it is not held up by
        # it (nothing a job leaves half done outlives the process that waits for it).
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._started = self._stopping = False
        self._stopped: Deferred[None] = Deferred()

    def start(self) -> None:
        """Start the thread now rather than with the first job."""
        if not self._started and not self._stopping:
            self._started = True
            self._thread.start()

    def call(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """``work(*args, **kwargs)`` on the thread, in its turn."""
        return self._submit(lambda: work(*args, **kwargs), ())

    def stop(self) -> Deferred[None]:
        """After every job queued so far: :meth:`_finish`, then end the thread; fires on
        the reactor when that is done (at once if no job ever ran)."""
        if not self._started:
            self._stopping = True
            return succeed(None)
        if not self._stopping:
            self._stopping = True
            self._queue.put(_STOP)
        return self._stopped

    def _submit(self, work: Callable[..., object], args: tuple[object, ...]
                ) -> Deferred[T]:
        done: Deferred[T] = Deferred()
        if self._stopping:
            done.errback(RuntimeError(f"{self._thread.name} is stopped"))
            return done
        self._queue.put((done, work, args))  # type: ignore[arg-type]
        self.start()
        return done

    # -- on the thread --

    def _finish(self) -> None:
        """Release what the thread owns, after its last job (on the thread)."""

    def _work(self) -> None:
        get, hand_back = self._queue.get, self._reactor.callFromThread
        while True:
            job = get()
            if job is _STOP:
                break
            done, work, args = job
            try:
                result = work(*args)
            except BaseException:
                hand_back(done.errback, Failure())
            else:
                hand_back(done.callback, result)
        try:
            self._finish()
        except BaseException:
            hand_back(self._stopped.errback, Failure())
        else:
            hand_back(self._stopped.callback, None)
