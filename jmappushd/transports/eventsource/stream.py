"""One open EventSource response: hub listener, throttle, ping timer, producer.

Life of a stream: ``open`` writes the headers and a first comment at once (ES-1),
subscribes to the hub and arms the ping; ``catch_up`` (only with
``Last-Event-ID``) sends what the client missed; hub changes pass through the
per-connection :class:`~jmappushd.core.throttle.CoalescingThrottle` and become
``state`` events. ``close`` (client gone, shutdown, revoked credentials) drops
the subscription, the ping timer and the throttle at once.

An idle stream owns exactly one timer, its ping (none with ``ping=0``). An event
only notes its time; when the timer fires it sends the ping or, if an event went
out meanwhile, waits until a whole interval has passed since that event (ES-4). When
the transport pushes back (a slow reader), the throttle is paused: changes keep
merging per account/type, so what is pending stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from zope.interface import implementer

from jmappushd.core.hub import Change, Hub, HubSubscription, merge, restrict
from jmappushd.core.throttle import CoalescingThrottle
from jmappushd.net import _fastpath
from jmappushd.net.sendnow import send_now
from jmappushd.net.timerwheel import TimerWheel, WheelTimer
from jmappushd.transports.eventsource.sse import OPEN_COMMENT, ping_event, state_event
from jmappushd.web.responses import is_gone

StateMap = Mapping[str, Mapping[str, str]]
Types = frozenset[str] | None
_Filter = tuple[frozenset[str], Types]


class Counter(Protocol):
    def inc(self) -> None: ...


class EventCache:
    """Filters and encodes each change once per distinct (accounts, types) filter.

    Fan-out hands one change to many streams; those with the same filter get the
    same restricted map and, when it goes out unmerged, the same event bytes.
    Only the newest change is remembered, so the cache stays tiny.
    """

    __slots__ = ("_entries", "_seq", "_token")

    def __init__(self) -> None:
        self._seq = -1
        self._token = ""
        self._entries: dict[_Filter, list[Any]] = {}

    def restricted(self, change: Change, account_ids: frozenset[str], types: Types
                   ) -> dict[str, dict[str, str]]:
        if change.seq != self._seq:
            self._seq, self._token, self._entries = change.seq, change.token, {}
        key = (account_ids, types)
        entry = self._entries.get(key)
        if entry is None:
            entry = [restrict(change.changed, account_ids, types), None]
            self._entries[key] = entry
        result: dict[str, dict[str, str]] = entry[0]
        return result

    def encode(self, changed: StateMap, token: str, account_ids: frozenset[str], types: Types
               ) -> bytes:
        """The ``state`` event for ``changed``; reuses bytes other streams already built."""
        if token == self._token:
            entry = self._entries.get((account_ids, types))
            if entry is not None and entry[0] == changed:
                if entry[1] is None:
                    entry[1] = state_event(changed, token)
                cached: bytes = entry[1]
                return cached
        return state_event(changed, token)


class StreamContext:
    """What every stream of one endpoint shares (one object, not one per connection)."""

    def __init__(self, clock: IReactorTime, hub: Hub, throttle_s: float,
                 events_sent: Counter, on_close: Callable[[EventStream], None],
                 wheel: TimerWheel | None = None) -> None:
        self.clock = clock
        self.wheel = wheel if wheel is not None else TimerWheel(clock)
        self.hub = hub
        self.throttle_s = throttle_s
        self.events_sent = events_sent
        self.on_close = on_close
        self.cache = EventCache()


@implementer(IPushProducer)
class EventStream:
    """A single ``text/event-stream`` response and everything it owns."""

    __slots__ = ("_ctx", "_held", "_held_token", "_last_write", "_paused", "_ping",
                 "_subscription",
                 "_throttle", "account_ids", "close_after", "closed", "credential_id",
                 "interval", "request", "types", "user_id")

    def __init__(self, ctx: StreamContext, request: Request, *, user_id: str,
                 credential_id: str, account_ids: frozenset[str], types: Types,
                 interval: int, close_after: bool) -> None:
        self._ctx = ctx
        self.request = request
        self.user_id = user_id
        self.credential_id = credential_id
        self.account_ids = account_ids
        self.types = types
        self.interval = interval
        self.close_after = close_after
        self.closed = False
        self._paused = False
        self._ping: WheelTimer | None = None
        self._last_write = 0.0
        self._subscription: HubSubscription | None = None
        self._held: dict[str, dict[str, str]] | None = None
        self._held_token = ""
        # Made on the first change: most streams sit idle, and idle should cost little.
        self._throttle: CoalescingThrottle | None = None

    def open(self) -> None:
        """Send 200 and the headers now, then start listening (ES-1, C-ES-5)."""
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.write(OPEN_COMMENT)
        # A stream lives for hours: drop what only its start needed (the parsed query,
        # the response headers now on the wire), about a tenth of an idle stream.
        request.args = {}
        request.responseHeaders = Headers()
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)
        self._subscription = self._ctx.hub.subscribe(self, self.account_ids)
        if self.interval > 0:
            self._last_write = self._ctx.clock.seconds()
            self._ping = self._ctx.wheel.call_later(self.interval, self._ping_due)

    def hold(self) -> None:
        """Keep live changes aside while the catch-up query runs (they follow it)."""
        if self._held is None:
            self._held = {}

    def catch_up_done(self, states: StateMap, token: str) -> None:
        """Send the catch-up (filtered here), then whatever arrived meanwhile (ES-10)."""
        held, self._held = self._held, None
        if self.closed:
            return
        missed = restrict(states, self.account_ids, self.types)
        if missed:
            self._throttled().offer(missed, token)
        if held and not self.closed:
            self._throttled().offer(held, self._held_token)

    def _throttled(self) -> CoalescingThrottle:
        throttle = self._throttle
        if throttle is None:
            ctx = self._ctx
            throttle = self._throttle = CoalescingThrottle(ctx.clock, ctx.throttle_s, self._flush)
            if self._paused:
                throttle.pause()
        return throttle

    def change_published(self, change: Change) -> None:
        """Hub callback: keep what this stream may see and wants (ES-12)."""
        if self.closed:
            return
        changed = self._ctx.cache.restricted(change, self.account_ids, self.types)
        if not changed:
            return
        if self._held is not None:
            merge(self._held, changed)
            self._held_token = change.token
            return
        self._throttled().offer(changed, change.token)

    def set_accounts(self, account_ids: frozenset[str]) -> None:
        """Grants changed: listen to the new set; forget pending data of lost accounts."""
        if self.closed or account_ids == self.account_ids:
            return
        if self._subscription is not None:
            self._subscription.cancel()
        self.account_ids = account_ids
        self._subscription = self._ctx.hub.subscribe(self, account_ids)
        throttled = self._throttle.pending if self._throttle is not None else {}
        for pending in (throttled, self._held or {}):
            for account_id in [a for a in pending if a not in account_ids]:
                del pending[account_id]

    def _flush(self, changed: StateMap, token: str) -> None:
        if self.closed or not changed:
            return
        ctx = self._ctx
        self._write(ctx.cache.encode(changed, token, self.account_ids, self.types))
        ctx.events_sent.inc()
        if self.close_after:
            self.end()  # ES-3, C-ES-3: the first state event ends the response

    def _write(self, data: bytes) -> None:
        request = self.request
        transport = _fastpath.chunk_transport(request, data)
        if transport is not None:
            # One event is one whole chunk: frame it here and send it at once
            # (what Request.write would queue for the next reactor turn).
            send_now(transport, _fastpath.chunk(data))
        else:
            request.write(data)
        # ES-4: the next ping is due a whole interval after this event; the timer is
        # not moved here (that costs more than the write) but when it fires.
        self._last_write = self._ctx.clock.seconds()

    def _ping_due(self) -> None:
        self._ping = None
        if self.closed:
            return
        clock = self._ctx.clock
        wait = self._last_write + self.interval - clock.seconds()
        if wait <= 0:
            if not self._paused:
                self._write(ping_event(self.interval))
            if self.closed:
                return
            wait = self.interval
        self._ping = self._ctx.wheel.call_later(wait, self._ping_due)

    # IPushProducer: Twisted pauses us while the client reads slowly.
    def pauseProducing(self) -> None:
        self._paused = True
        if self._throttle is not None:
            self._throttle.pause()

    def resumeProducing(self) -> None:
        if self._paused and not self.closed:
            self._paused = False
            if self._throttle is not None:
                self._throttle.resume()

    def stopProducing(self) -> None:
        self.close()

    def end(self) -> None:
        """Finish the response cleanly (closeafter, shutdown, revoked credentials)."""
        request = self.request
        self.close()
        if not is_gone(request):
            request.finish()

    def close(self) -> None:
        """Release the subscription, the ping timer and the throttle; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._ping is not None:
            if self._ping.active():
                self._ping.cancel()
            self._ping = None
        if self._throttle is not None:
            self._throttle.cancel()
        self._held = None
        self._unregister()
        self._ctx.on_close(self)

    def _unregister(self) -> None:
        request = self.request
        if getattr(request, "producer", None) is None:
            return
        if getattr(request, "channel", None) is not None:
            request.unregisterProducer()
        else:
            request.producer = None  # the channel is gone; just break the reference cycle

    def _finished(self, result: Failure | None) -> None:
        self.close()

