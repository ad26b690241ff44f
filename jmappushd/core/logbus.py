"""The cluster bus: wake-ups only, the shared change log is the message.

Several daemons on one database each fan out every change, so each must see every
seq. A wake-up (PostgreSQL's NOTIFY, a periodic tick, a reconnect) carries nothing
the node relies on: it makes the node read the log after its contiguous watermark
and hand what it finds to the hub in seq order (:meth:`Hub.fill_gap`). A wake-up
lost while the LISTEN connection was down is therefore healed by the next read,
and a duplicate or late one costs at most a read that finds nothing.

A change published on this node is announced to the local hub at once, as the
in-process bus does; when its own notification comes back the watermark is
already past it, so it is not delivered again. (A notification may arrive before
the commit's answer and cost a read; the store hands out results in call order, so
that read is answered after the publish was announced, and the hub skips what it
has already received.)

A node behind the pruned horizon of the log (down longer than the log keeps)
cannot read the changes it missed one by one; the states table still holds the
newest state of every pair last changed there, so those are fanned out merged as
one change (states are idempotent: nothing is lost, nothing older is sent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from jmappushd.core.hub import Change, ChangeLog, IBus, StateMap

# Seconds between two reads that no wake-up asked for: the heal for a wake-up lost
# without the LISTEN connection noticing (a silent network partition).
POLL_INTERVAL = 5.0
# Entries per read; a full page is followed by another read at once.
PAGE_SIZE = 10_000


class ClusterLog(Protocol):
    """The shared log as the bus reads it (the PostgreSQL store)."""

    def changes_after(self, seq: int, limit: int = ...
                      ) -> defer.Deferred[Sequence[tuple[int, StateMap]]]:
        """Logged ``(seq, changed)`` after ``seq`` in seq order, at most ``limit``; seqs
        are contiguous except below the pruned horizon."""
        ...

    def states_changed(self, after: int, upto: int) -> defer.Deferred[dict[str, dict[str, str]]]:
        """Every account's newest states last changed with a seq in ``(after, upto]``."""
        ...

    def settled(self) -> defer.Deferred[None]:
        """Fires once every publish of this node called so far has been answered."""
        ...


class WatermarkHub(Protocol):
    """The part of the hub the bus drives."""

    @property
    def last_seq(self) -> int: ...

    async def fill_gap(self, log: ChangeLog) -> int: ...


class _Page:
    """One read of the log for :meth:`Hub.fill_gap`, healing a pruned horizon."""

    log = Logger()

    def __init__(self, source: ClusterLog, limit: int) -> None:
        self._source = source
        self._limit = limit
        self.full = False

    def changes_after(self, seq: int) -> defer.Deferred[Sequence[tuple[int, StateMap]]]:
        return defer.Deferred.fromCoroutine(self._read(seq))

    async def _read(self, seq: int) -> Sequence[tuple[int, StateMap]]:
        entries = await self._source.changes_after(seq, self._limit)
        self.full = len(entries) >= self._limit
        if not entries or entries[0][0] <= seq + 1:
            return entries
        # Seqs are contiguous in the log: what lies between is pruned, not a hole.
        first = entries[0][0]
        missed = await self._source.states_changed(seq, first - 1)
        self.log.warn("this node is behind the change log's pruned horizon (watermark "
                      "{seq}, oldest kept {first}): the newest states of {count} accounts "
                      "changed in between are fanned out merged", seq=seq, first=first,
                      count=len(missed))
        if not missed:
            return entries
        return [(first - 1, missed), *entries]


@implementer(IBus)
class LogBus:
    """Local announcements at once; everything else read from the log after the watermark.

    :meth:`wake` is the entry point of every wake-up; at most one read runs at a
    time, and a wake-up during a read makes one more read after it.
    """

    log = Logger()

    def __init__(self, source: ClusterLog, clock: IReactorTime, *,
                 poll_interval: float = POLL_INTERVAL, page_size: int = PAGE_SIZE) -> None:
        self._source = source
        self._clock = clock
        self._poll_interval = poll_interval
        self._page_size = page_size
        self._receiver: Callable[[Change], None] | None = None
        self._hub: WatermarkHub | None = None
        self._reading: defer.Deferred[None] | None = None
        self._again = False
        self._failing = False
        self._settling: int | None = None  # the highest seq woken for while settling
        self._poll: task.LoopingCall | None = None
        self.reads = 0  # reads of the log made (tests and metrics)

    # -- IBus --

    def announce(self, change: Change) -> None:
        if self._receiver is not None:
            self._receiver(change)

    def set_receiver(self, receiver: Callable[[Change], None]) -> None:
        self._receiver = receiver

    # -- reading --

    def attach(self, hub: WatermarkHub) -> None:
        """The hub whose watermark reads start from (the one this bus announces to)."""
        self._hub = hub

    def start(self) -> None:
        """Read now, then every ``poll_interval`` (one timer per node)."""
        if self._poll is None:
            self._poll = task.LoopingCall(self.wake)
            self._poll.clock = self._clock
            self._poll.start(self._poll_interval, now=True)

    def stop(self) -> defer.Deferred[None]:
        """No more reads; fires once the read in flight (if any) has ended."""
        if self._poll is not None:
            if self._poll.running:
                self._poll.stop()
            self._poll = None
        self._again = False
        reading = self._reading
        if reading is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        reading.addBoth(lambda _: done.callback(None))
        return done

    def wake(self, upto: int | None = None) -> None:
        """Something may have been logged (up to seq ``upto``, if the wake-up says).

        A wake-up for seqs the watermark has passed (this node's own publishes) reads
        nothing. One that comes while this node's own publishes are being answered
        waits for them first: the commit's notification usually overtakes its answer,
        and reading then would fetch this node's own changes back.
        """
        hub = self._hub
        if hub is None or (upto is not None and upto <= hub.last_seq):
            return
        if upto is not None:
            if self._settling is not None:
                self._settling = max(self._settling, upto)
                return
            settled = self._source.settled()
            if not settled.called:
                self._settling = upto
                settled.addBoth(self._settled)
                return
        self._read_now(hub)

    def _settled(self, _: object) -> None:
        upto, self._settling = self._settling, None
        hub = self._hub
        if upto is not None and hub is not None and upto > hub.last_seq:
            self._read_now(hub)

    def _read_now(self, hub: WatermarkHub) -> None:
        if self._reading is not None:
            self._again = True
            return
        reading = defer.Deferred.fromCoroutine(self._read_all(hub))
        if not reading.called:  # a source answering at once has finished already
            self._reading = reading

    def reach(self, seq: int) -> defer.Deferred[None]:
        """Read the log now when ``seq`` is past the watermark (a token sealed by a node
        that is ahead); fires after at most two reads (one under way, one more)."""
        return defer.Deferred.fromCoroutine(self._reach(seq))

    async def _reach(self, seq: int) -> None:
        for _ in range(2):
            hub = self._hub
            if hub is None or hub.last_seq >= seq:
                return
            self.wake(seq)
            reading = self._reading
            if reading is None:
                return  # the read finished at once (or could not start)
            done: defer.Deferred[None] = defer.Deferred()

            def finished(result: object, done: defer.Deferred[None] = done) -> object:
                done.callback(None)
                return result  # the read's own outcome stays with it

            reading.addBoth(finished)
            await done

    async def _read_all(self, hub: WatermarkHub) -> None:
        try:
            while True:
                self._again = False
                page = _Page(self._source, self._page_size)
                self.reads += 1
                try:
                    await hub.fill_gap(page)
                except Exception as exc:
                    if not self._failing:
                        self._failing = True
                        self.log.warn("reading the change log failed (retried at the next "
                                      "wake-up, at most {interval:.0f} s): {reason}",
                                      interval=self._poll_interval,
                                      reason=str(exc) or type(exc).__name__)
                    return
                if self._failing:
                    self._failing = False
                    self.log.info("reading the change log again (watermark {seq})",
                                  seq=hub.last_seq)
                if not (page.full or self._again):
                    return
        finally:
            self._reading = None
