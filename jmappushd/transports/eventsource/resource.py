"""``GET {eventSourceUrl}``: JMAP push over server-sent events (RFC 8620 §7.3).

The resource authenticates (Basic, Bearer, or an ``access_token`` query parameter
for browsers, ES-1/SES-1), validates ``types``, ``closeafter`` and ``ping``
(C-ES-2), enforces the per-user connection limit and hands the response to an
:class:`~jmappushd.transports.eventsource.stream.EventStream`. With ``Last-Event-ID`` the stream
first gets what the client missed (ES-10, C-ES-3): it subscribes to the hub
*before* asking the hub what changed since the token, so a change racing with
the query may be sent twice but is never lost. A browser page cannot set that
header on a new ``EventSource`` (only the browser's own reconnects send it), so a
``lastEventId`` query parameter is read when the header is absent. CORS, including
the ``OPTIONS`` preflight, is the JMAP tree's (:mod:`jmappushd.web.cors`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from jmappushd.auth.authenticator import Principal
from jmappushd.context import App
from jmappushd.transports.eventsource.registry import StreamRegistry
from jmappushd.transports.eventsource.stream import EventStream, StreamContext
from jmappushd.web.httpauth import authenticate
from jmappushd.web.responses import is_gone, serve_async, write_problem

TRANSPORT = "eventsource"
# Matched with fullmatch: "$" would also match before a trailing newline ("30\n").
_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_:.-]{0,127}")
_PING = re.compile(r"[0-9]{1,10}")
MAX_TYPES = 128
MAX_LAST_EVENT_ID = 200


class InvalidParameter(ValueError):
    """A missing or malformed query parameter; ``name`` says which (C-ES-2)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(detail)
        self.name = name


@dataclass(frozen=True, slots=True)
class StreamParams:
    """The validated query: ``types`` None means ``*``; ``ping`` is already clamped."""

    types: frozenset[str] | None
    close_after: bool
    ping: int


def clamp_ping(requested: int, ping_min: int, ping_max: int) -> int:
    """0 stays 0 (no pings, ES-4); anything else into [min, max] (ES-7, C-ES-1)."""
    if requested == 0:
        return 0
    return max(ping_min, min(ping_max, requested))


_types_memo: dict[str, frozenset[str] | None] = {}


def parse_types(raw: str) -> frozenset[str] | None:
    """``*`` or a comma-separated list of type names (ES-2); shared per distinct value."""
    cached = _types_memo.get(raw)
    if cached is not None or raw in _types_memo:
        return cached
    if raw == "*":
        types: frozenset[str] | None = None
    else:
        names = raw.split(",")
        if len(names) > MAX_TYPES:
            raise InvalidParameter("types", f"types lists more than {MAX_TYPES} names")
        for name in names:
            if not _TYPE_NAME.fullmatch(name):
                raise InvalidParameter(
                    "types", f"types must be * or a comma-separated list of type names, "
                    f"not {raw[:100]!r}")
        types = frozenset(names)
    if len(_types_memo) >= 1024:
        _types_memo.clear()
    _types_memo[raw] = types
    return types


def parse_params(args: Mapping[bytes, Sequence[bytes]], ping_min: int, ping_max: int
                 ) -> StreamParams:
    """Validate the three template variables; Twisted has already percent-decoded them."""
    types = parse_types(_single(args, "types"))
    closeafter = _single(args, "closeafter")
    if closeafter not in ("state", "no"):
        raise InvalidParameter("closeafter", "closeafter must be state or no")
    ping = _single(args, "ping")
    if not _PING.fullmatch(ping):
        raise InvalidParameter("ping", "ping must be a non-negative integer number of seconds")
    return StreamParams(types, closeafter == "state", clamp_ping(int(ping), ping_min, ping_max))


def _single(args: Mapping[bytes, Sequence[bytes]], name: str) -> str:
    values = args.get(name.encode("ascii"))
    if not values:
        raise InvalidParameter(name, f"the {name} parameter is missing")
    if len(values) > 1:
        raise InvalidParameter(name, f"the {name} parameter is given more than once")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameter(name, f"the {name} parameter is not UTF-8") from None


def last_event_id_of(request: Request) -> bytes | None:
    """The ``Last-Event-ID`` header, else the ``lastEventId`` query parameter."""
    header = request.getHeader(b"Last-Event-ID")
    if header is not None:
        return header
    values = request.args.get(b"lastEventId")
    return values[0] if values else None


class EventSourceResource(Resource):
    """The endpoint; one per daemon, mounted at ``/jmap/eventsource``."""

    isLeaf = True
    log = Logger()
    cors_methods = (b"GET",)

    def __init__(self, app: App, clock: IReactorTime, registry: StreamRegistry) -> None:
        super().__init__()
        self._app = app
        self.registry = registry
        config = app.config.event_source
        self.context = StreamContext(
            clock, app.hub, config.event_source_throttle_s,
            app.metrics.events_sent.labels(TRANSPORT), registry.discard,
            wheel=app.wheel if clock is app.clock else None,
        )

    def render(self, request: Request) -> Any:
        if request.method == b"GET":
            return serve_async(request, self._handle(request), self.log)
        request.setHeader(b"Allow", b"GET, OPTIONS")
        write_problem(request, 405, "the EventSource endpoint only answers GET")
        return NOT_DONE_YET

    async def _handle(self, request: Request) -> None:
        app = self._app
        principal = await authenticate(app, request, app.config.auth.allow_access_token)
        if principal is None:
            self._count(request.code)
            return
        config = app.config.event_source
        try:
            params = parse_params(request.args, config.ping_min, config.ping_max)
        except InvalidParameter as exc:
            self._count(400)
            write_problem(request, 400, str(exc), parameter=exc.name)
            return
        password_fp = await self.registry.password_fingerprint_for(principal)
        if is_gone(request):
            return
        if self.registry.closing:
            self._count(503)
            write_problem(request, 503, "the server is shutting down")
            return
        if self.registry.count_for(principal.user_id) >= config.max_connections_per_user:
            self._count(429)
            write_problem(request, 429, "too many open EventSource connections for this user "
                          f"(at most {config.max_connections_per_user})")
            return
        last_event_id = last_event_id_of(request)  # before _open drops the query
        stream = self._open(request, principal, params, password_fp)
        if last_event_id is not None:
            await self._catch_up(stream, last_event_id)

    def _open(self, request: Request, principal: Principal, params: StreamParams,
              password_fp: bytes | None) -> EventStream:
        stream = EventStream(
            self.context, request, user_id=principal.user_id,
            credential_id=principal.credential_id, account_ids=principal.account_ids,
            types=params.types, interval=params.ping, close_after=params.close_after,
            upstream=principal.upstream,
        )
        self.registry.add(stream, password_fp)
        stream.open()
        self._count(200)
        return stream

    async def _catch_up(self, stream: EventStream, header: bytes) -> None:
        """The stream is already subscribed (and holds live changes) during the query;
        if the query fails, the stream ends (the client retries the same Last-Event-ID)."""
        token = header.decode("ascii", "replace").strip()
        if len(token) > MAX_LAST_EVENT_ID:
            token = ""
        await stream.catch_up(token or None)

    def _count(self, status: int) -> None:
        self._app.metrics.http_requests.labels(TRANSPORT, str(status)).inc()

