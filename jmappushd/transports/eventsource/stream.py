"""One open EventSource response: its writer, ping timer and producer.

The listener machine (hub subscription, catch-up while holding live changes,
per-connection :class:`~jmappushd.core.throttle.CoalescingThrottle`, one
encoding per view) is the shared :class:`~jmappushd.core.feed.Feed`; a stream
adds what is EventSource's own. ``open`` writes the headers and a first comment
at once (ES-1), subscribes and arms the ping; ``catch_up`` (only with
``Last-Event-ID``) sends what the client missed and ends the stream if the query
fails; changes become ``state`` events (never an empty one). ``close`` (client
gone, shutdown, revoked credentials) drops the subscription, the ping timer and
the throttle at once, and writes the stream's access-log line (``closed=server`` when
we ended it, ``closed=client`` when the client went away).

An idle stream owns exactly one timer, its ping (none with ``ping=0``). An event
only notes its time; when the timer fires it sends the ping or, if an event went
out meanwhile, waits until a whole interval has passed since that event (ES-4). When
the transport pushes back (a slow reader), the throttle is paused: changes keep
merging per account/type, so what is pending stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from zope.interface import implementer

from jmappushd.auth.authenticator import UpstreamIdentity
from jmappushd.core.connections import EndReason
from jmappushd.core.feed import Feed, FeedContext
from jmappushd.core.hub import Hub
from jmappushd.core.views import Types, ViewCache
from jmappushd.net import _fastpath
from jmappushd.net.sendnow import send_now
from jmappushd.net.timerwheel import TimerWheel, WheelTimer
from jmappushd.store.records import Account
from jmappushd.transports.eventsource.sse import OPEN_COMMENT, ping_event, state_event
from jmappushd.web.accesslog import Closed
from jmappushd.web.responses import close_connection_after, is_gone
from jmappushd.web.site import log_as_session, stream_ended

StateMap = Mapping[str, Mapping[str, str]]


class Counter(Protocol):
    def inc(self) -> None: ...


class StreamContext(FeedContext):
    """What every stream of one endpoint shares (one object, not one per connection)."""

    def __init__(self, clock: IReactorTime, hub: Hub, throttle_s: float,
                 events_sent: Counter, on_close: Callable[[EventStream], None],
                 wheel: TimerWheel | None = None) -> None:
        super().__init__(clock, hub, throttle_s, ViewCache(state_event))
        self.wheel = wheel if wheel is not None else TimerWheel(clock)
        self.events_sent = events_sent
        self.on_close = on_close


@implementer(IPushProducer)
class EventStream(Feed):
    """A single ``text/event-stream`` response and everything it owns.

    The listener machine (hub, catch-up, throttle, per-view encoding) is the shared
    :class:`~jmappushd.core.feed.Feed`; this class is its writer, its ping and its
    registry member.
    """

    __slots__ = ("_last_write", "_ping", "close_after", "credential_id", "interval",
                 "request", "upstream")
    _ctx: StreamContext
    log = Logger()

    def __init__(self, ctx: StreamContext, request: Request, *, user_id: str,
                 credential_id: str, account_ids: frozenset[str], types: Types,
                 interval: int, close_after: bool,
                 upstream: UpstreamIdentity | None = None) -> None:
        super().__init__(ctx, account_ids, types, user_id=user_id)
        self.request = request
        self.credential_id = credential_id
        # Gateway mode: the login's upstream identity (shared with its Principal), which
        # the upstream re-check matches streams to their credential by.
        self.upstream = upstream
        self.interval = interval
        self.close_after = close_after
        self._ping: WheelTimer | None = None
        self._last_write = 0.0

    def open(self) -> None:
        """Send 200 and the headers now, then start listening (ES-1, C-ES-5)."""
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        if self.close_after:
            close_connection_after(request)
        request.write(OPEN_COMMENT)
        # A stream lives for hours: drop what only its start needed (the parsed query,
        # the response headers now on the wire), about a tenth of an idle stream.
        request.args = {}
        request.responseHeaders = Headers()
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)
        log_as_session(request)
        self.listen()
        if self.interval > 0:
            self._last_write = self._ctx.clock.seconds()
            self._ping = self._ctx.wheel.call_later(self.interval, self._ping_due)

    def catch_up_failed(self, failure: Failure) -> None:
        """The client reconnects with the same Last-Event-ID: end rather than skip."""
        self.log.failure("catch-up for {user_id} failed; ending the stream", failure,
                         user_id=self.user_id)
        self.end()

    def deliver(self, data: bytes) -> None:
        """Write one ``state`` event (never an empty one: the feed skips those)."""
        self._write(data)
        self._ctx.events_sent.inc()
        if self.close_after:
            self.end()  # ES-3, C-ES-3: the first state event ends the response

    # -- registry member --

    def grants_changed(self, accounts: tuple[Account, ...]) -> None:
        self.set_accounts(frozenset(a.id for a in accounts))

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
        self.pause()

    def resumeProducing(self) -> None:
        self.resume()

    def stopProducing(self) -> None:
        self.close()

    def end(self, reason: EndReason | None = None) -> None:
        """Finish the response cleanly (closeafter, shutdown, revoked credentials)."""
        request = self.request
        self.close("server")
        if not is_gone(request):
            request.finish()

    def close(self, closed: Closed = "client") -> None:
        """Release the subscription, the ping timer and the throttle; log the end (once)."""
        if self.closed:
            return
        self.cancel()
        if self._ping is not None:
            if self._ping.active():
                self._ping.cancel()
            self._ping = None
        self._unregister()
        self._ctx.on_close(self)
        stream_ended(self.request, closed)

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

