"""``[upstream] changes = eventsource``: the upstream's own push, as a trigger.

For upstreams whose EventSource works (Stalwart, Apache James, Cyrus 3.12 and later), the
gateway keeps one stream open to the upstream's ``eventSourceUrl`` with the reader's
credentials (``types=*``, ``closeafter=no``): its ``state`` events name every changed
account the reader may read, and each named account goes to the state reader, which reads
the real states (so a client always gets the states ``Foo/get`` returns). One stream for the
reader, not one per account: it already covers every account the reader sees, and costs the
upstream one connection.

The stream reconnects with backoff (1 s doubling to 60 s, reset once an event arrives) and
sends the last event id it saw as ``Last-Event-ID``, so the upstream can resume; an upstream
that cannot resume answers with the current state, which the reader compares with what was
recorded (nothing lost either way). Every line and event is bounded in size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from jmappushd.jmap import ijson
from jmappushd.jmap.problems import RequestProblem

if TYPE_CHECKING:
    from treq._types import _ITreqReactor

__all__ = ["EventStreamParser", "UpstreamEventSource"]

MAX_LINE = 1_000_000  # a state event names accounts and types: this is generous
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


class EventStreamParser:
    """Incremental text/event-stream parsing (HTML's algorithm, the parts JMAP uses)."""

    def __init__(self, event: Callable[[str, str, str | None], None]) -> None:
        """``event(type, data, id)`` is called for each complete event."""
        self._event = event
        self._buffer = b""
        self._type = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            ends = [i for i in (self._buffer.find(b"\n"), self._buffer.find(b"\r")) if i >= 0]
            if not ends:
                if len(self._buffer) > MAX_LINE:
                    raise ValueError("an event-stream line is too long")
                return
            cut = min(ends)
            width = 1
            if self._buffer[cut:cut + 1] == b"\r":
                if cut + 1 == len(self._buffer):
                    return  # a CR last: wait to see whether an LF follows
                if self._buffer[cut + 1:cut + 2] == b"\n":
                    width = 2
            line, self._buffer = self._buffer[:cut], self._buffer[cut + width:]
            self._line(line.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value

    def _dispatch(self) -> None:
        if self._id is not None:
            self.last_id = self._id
        if self._data:
            self._event(self._type or "message", "\n".join(self._data), self.last_id)
        self._type, self._data, self._id = "", [], None


class _StreamReader(Protocol):
    """Feeds the body to the parser; ``done`` fires when the stream ends, and cancelling
    it closes the connection (else a stopped daemon would leave the upstream's stream
    open, the connection in use and out of the pool's reach)."""

    def __init__(self, parser: EventStreamParser) -> None:
        self._parser = parser
        self._done: Deferred[None] = Deferred(self._cancelled)

    @property
    def done(self) -> Deferred[None]:
        return self._done

    def _cancelled(self, _: Deferred[None]) -> None:
        transport = self.transport
        if transport is not None:
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            self._parser.feed(data)
        except ValueError as e:
            if not self._done.called:
                self._done.errback(Failure(e))
            transport = self.transport
            if transport is not None:
                transport.loseConnection()  # the body's transport: stop reading it

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._done.called:
            self._done.callback(None)


def accounts_of_state_event(data: str) -> list[str]:
    """The account ids a ``state`` event's StateChange names (none if it is malformed)."""
    try:
        value = ijson.loads(data.encode("utf-8"))
    except RequestProblem:
        return []
    changed = value.get("changed") if isinstance(value, dict) else None
    if not isinstance(changed, dict):
        return []
    return [a for a, types in changed.items() if isinstance(a, str) and isinstance(types, dict)]


class UpstreamEventSource(Service):
    """Keeps the reader's upstream event stream open and reports the accounts it names."""

    log = Logger()

    def __init__(self, clock: IReactorTime, client: HTTPClient, url: Callable[[], Deferred[str]],
                 authorization: bytes, changed: Callable[[str], None]) -> None:
        """``url()`` gives the stream URL (from the reader's session, expanded)."""
        self._clock = clock
        self._client = client
        self._url = url
        self._authorization = authorization
        self._changed = changed
        self._parser = EventStreamParser(self._event)
        self._backoff = 0.0
        self._retry: IDelayedCall | None = None
        self._current: Deferred[None] | None = None
        self.connects = 0

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._current is not None:
            self._current.cancel()

    def _event(self, kind: str, data: str, event_id: str | None) -> None:
        self._backoff = 0.0  # the stream works
        if kind == "state":
            for account in accounts_of_state_event(data):
                self._changed(account)

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        self.connects += 1
        self._current = Deferred.fromCoroutine(self._stream())
        self._current.addBoth(self._ended)

    async def _stream(self) -> None:
        url = await self._url()
        headers = Headers({b"authorization": [self._authorization],
                           b"accept": [b"text/event-stream"]})
        if self._parser.last_id is not None:
            headers.setRawHeaders(b"last-event-id", [self._parser.last_id.encode("utf-8")])
        reactor = cast("_ITreqReactor", self._clock)
        response: IResponse = await self._client.request(
            "GET", url, headers=headers, allow_redirects=False, unbuffered=True,
            reactor=reactor)
        if response.code != 200:
            raise ValueError(f"upstream event stream answered {response.code}")
        reader = _StreamReader(self._parser)
        response.deliverBody(reader)
        await reader.done

    def _ended(self, result: object) -> None:
        self._current = None
        if not self.running:
            return
        if isinstance(result, Failure) and not result.check(CancelledError):
            self.log.info("Upstream event stream ended: {why}; reconnecting",
                          why=result.getErrorMessage())
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 or BACKOFF_FIRST)
        self._retry = self._clock.callLater(self._backoff, self._connect)
