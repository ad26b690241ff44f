"""The JMAP conversation of one WebSocket, independent of how its frames travel.

RFC 8887's messages (Requests with the in-flight limit, RequestErrors,
WebSocketPushEnable/Disable, StateChanges with pushState) are handled here
against a small :class:`FrameSink`: write one whole prebuilt frame, close with a
code, say whether it is open. The Autobahn protocol (an HTTP/1.1 upgrade) is one
such sink; an HTTP/2 extended-CONNECT stream (RFC 8441), which carries the same
RFC 6455 frames, can be another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from jmappushd.auth.authenticator import Principal
from jmappushd.core.connections import EndReason
from jmappushd.core.feed import FeedContext
from jmappushd.core.inflight import InFlightRequests
from jmappushd.jmap.crashlog import summarise
from jmappushd.jmap.problems import RequestProblem
from jmappushd.jmap.response import Response
from jmappushd.store.records import Account
from jmappushd.transports.websocket.frames import text_frame
from jmappushd.transports.websocket.messages import (
    PUSH_DISABLE,
    PUSH_ENABLE,
    BadMessage,
    encode_request_error,
    parse_message,
    parse_push_enable,
    response_head,
)
from jmappushd.transports.websocket.push import PushSession
from jmappushd.web.responses import problem_body

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008

CLOSE_CODES = {EndReason.SHUTDOWN: CLOSE_GOING_AWAY, EndReason.REVOKED: CLOSE_POLICY_VIOLATION}
"""How the registry's verdicts end a WebSocket: 1001 at shutdown, 1008 (C-WS-5) on
revoked credentials (removed user, revoked token, changed password)."""


class FrameSink(Protocol):
    """Where a session's frames go (an Autobahn connection, an HTTP/2 stream)."""

    @property
    def writable(self) -> bool: ...

    def send_frame(self, frame: bytes) -> None:
        """Write one whole, prebuilt RFC 6455 frame."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code``."""


class Counter(Protocol):
    def inc(self) -> None: ...


class Processor(Protocol):
    """The method machinery shared with HTTP (``jmap.processor.RequestProcessor``)."""

    def process_now(self, request: Any, principal: Any, session_state: str, reserve: int = 0
                    ) -> Response | defer.Deferred[Response]: ...


@dataclasses.dataclass(frozen=True)
class ConversationContext:
    """What every conversation of one endpoint shares."""

    processor: Processor
    session_state: Callable[[Principal], str]
    max_size_request: int
    in_flight: InFlightRequests  # per user, shared with HTTP and every other socket
    feeds: FeedContext
    events_sent: Counter
    count_error: Callable[[str], None]


class Conversation:
    """RFC 8887 for one authenticated client, talking to a :class:`FrameSink`."""

    __slots__ = ("_ctx", "_paused", "_push", "_sink", "principal")
    log = Logger()

    def __init__(self, ctx: ConversationContext, sink: FrameSink, principal: Principal) -> None:
        self._ctx = ctx
        self._sink = sink
        self.principal = principal
        self._paused = False
        self._push: PushSession | None = None

    # -- registry member (the credential policy's tiny interface) --

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def credential_id(self) -> str:
        return self.principal.credential_id

    @property
    def account_ids(self) -> frozenset[str]:
        return self.principal.account_ids

    def end(self, reason: EndReason) -> None:
        self._sink.close(CLOSE_CODES[reason], reason.value)

    def grants_changed(self, accounts: tuple[Account, ...]) -> None:
        self.refresh(dataclasses.replace(self.principal, accounts=accounts))

    def refresh(self, principal: Principal) -> None:
        """Grants changed: later requests and pushes use the new account list."""
        self.principal = principal
        if self._push is not None:
            self._push.set_accounts(principal.account_ids)

    # -- messages --

    def message(self, payload: bytes) -> None:
        """One whole text message (already valid UTF-8)."""
        if not self._sink.writable:
            return
        try:
            kind, obj, request_id = parse_message(payload, self._ctx.max_size_request)
            if kind == PUSH_ENABLE:
                self._enable_push(obj, request_id)
            elif kind == PUSH_DISABLE:
                self.stop_push()  # WS-20; a no-op when not enabled (C-WS-6)
            else:
                self._request(obj, request_id)
        except BadMessage as bad:
            self._problem(bad.problem, bad.request_id)

    def _request(self, obj: dict[str, Any], request_id: str | None) -> None:
        ctx = self._ctx
        principal = self.principal
        user_id = principal.user_id
        if not ctx.in_flight.acquire(user_id):
            raise BadMessage(RequestProblem(
                "limit", f"more than {ctx.in_flight.limit} concurrent requests",
                limit="maxConcurrentRequests"), request_id)  # WS-15, across all transports
        head = response_head(request_id)
        try:
            result = ctx.processor.process_now(
                obj, principal, ctx.session_state(principal), len(head))
        except Exception:
            self._failed(Failure(), user_id, request_id)
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(self._answer, self._failed, callbackArgs=(user_id, head),
                                errbackArgs=(user_id, request_id))
        else:
            self._answer(result, user_id, head)

    def _answer(self, response: Response, user_id: str, head: bytes) -> None:
        self._ctx.in_flight.release(user_id)
        self._send_text(response.encode(head))

    def _failed(self, failure: Failure, user_id: str, request_id: str | None) -> None:
        self._ctx.in_flight.release(user_id)
        if isinstance(failure.value, RequestProblem):
            self._problem(failure.value, request_id)
            return
        # One bounded line, not a traceback: the processor already contains method
        # failures, so this is a bug outside them.
        exc = failure.value
        self.log.error("WebSocket request crashed: {error}",
                       error=summarise(exc) if exc is not None else "unknown")
        self._send_text(encode_request_error(problem_body(500, "internal error"), request_id))

    def _problem(self, problem: RequestProblem, request_id: str | None) -> None:
        self._ctx.count_error(problem.kind)
        self._send_text(encode_request_error(problem.to_json(), request_id))

    def _send_text(self, payload: bytes) -> None:
        """One whole text message as one frame (no extension is ever negotiated)."""
        if self._sink.writable:
            self._sink.send_frame(text_frame(payload))

    # -- push --

    def _enable_push(self, obj: dict[str, Any], request_id: str | None) -> None:
        """WS-18; a second enable replaces the first and catches up again (C-WS-6)."""
        enable = parse_push_enable(obj, request_id)
        self.stop_push()
        push = PushSession(self._ctx.feeds, self.send_push, self.principal.account_ids,
                           enable.types, user_id=self.principal.user_id)
        self._push = push
        if self._paused:
            push.pause()
        push.start(enable.push_state)

    def send_push(self, frame: bytes) -> None:
        """Write one StateChange text frame (built by ``transports.websocket.frames``)."""
        if self._sink.writable:
            self._sink.send_frame(frame)
            self._ctx.events_sent.inc()

    def stop_push(self) -> None:
        push, self._push = self._push, None
        if push is not None:
            push.cancel()

    # -- flow control --

    def pause(self) -> None:
        """The client reads slower than we write: hold pushes (merged)."""
        self._paused = True
        if self._push is not None:
            self._push.pause()

    def resume(self) -> None:
        self._paused = False
        if self._push is not None:
            self._push.resume()
