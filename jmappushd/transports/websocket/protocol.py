"""One JMAP WebSocket connection: Requests in; Responses, RequestErrors, StateChanges out.

The principal was authenticated before the upgrade (see ``handshake``). Every
timer runs on the app's timer wheel (on its injected clock): one timer per
connection sends the heartbeat ping, enforces ``ws-client-timeout`` and, once we have sent a
Close, bounds the closing handshake; Autobahn's own timers (which use
``txaio.config.loop``) are all switched off by the factory. The connection is
the transport's push producer, so a slow reader pauses its StateChanges (they
keep merging in the throttle) and the reading of further requests.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jmappushd.auth.authenticator import Principal
from jmappushd.jmap.problems import RequestProblem
from jmappushd.net import _fastpath
from jmappushd.net.sendnow import send_now
from jmappushd.net.timerwheel import WheelTimer
from jmappushd.transports.websocket.eager import run_eagerly
from jmappushd.transports.websocket.frames import FIN_PONG, FIN_TEXT, PING_FRAME, text_frame
from jmappushd.transports.websocket.messages import (
    PUSH_DISABLE,
    PUSH_ENABLE,
    SUBPROTOCOL,
    BadMessage,
    encode_request_error,
    encode_response,
    parse_message,
    parse_push_enable,
)
from jmappushd.transports.websocket.push import PushSession
from jmappushd.web.responses import problem_body

if TYPE_CHECKING:
    from jmappushd.transports.websocket.factory import JMAPWebSocketFactory

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_GRACE_S = 2.0
"""How long a peer may take to answer our Close before the TCP connection is aborted."""

_OPEN = WebSocketServerProtocol.STATE_OPEN
_CLOSED = WebSocketServerProtocol.STATE_CLOSED


@implementer(IPushProducer)
class JMAPWebSocketProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """The server side of RFC 8887 for one authenticated client."""

    __slots__ = ("_in_flight", "_last_rx", "_next_ping", "_paused", "_push",
                 "_timer", "principal")
    _log = Logger()
    factory: JMAPWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.principal: Principal | None = None
        self._timer: WheelTimer | None = None
        self._last_rx = 0.0
        self._next_ping = 0.0
        self._push: PushSession | None = None
        self._in_flight = 0
        self._paused = False

    # -- connection lifecycle --

    def connectionMade(self) -> None:
        super().connectionMade()
        # twisted.web registered its HTTPChannel as the producer; we own the socket now.
        transport = self._transport()
        with contextlib.suppress(RuntimeError):
            transport.unregisterProducer()
        transport.registerProducer(self, True)

    def _transport(self) -> Any:
        """The TCP or TLS transport (a consumer and push producer; typed loosely)."""
        return self.transport

    def dataReceived(self, data: bytes) -> None:
        # Anything at all from the client (message, ping, pong) proves it is alive.
        self._last_rx = self.factory.clock.seconds()
        if _fastpath.ws_between_frames(self):
            data = self._take_whole_frames(data)
            if not data:
                return
        _fastpath.ws_feed(self, data)

    def _take_whole_frames(self, data: bytes) -> bytes:
        """Handle the common frames here; return the rest, from the first other one, for
        Autobahn.

        A JMAP client mostly sends whole, small, masked text frames (Requests) and
        empty pongs. Autobahn's general state machine costs more than the JMAP work
        of a ``Core/echo``, so those are taken straight from the TCP chunk: unmasked
        (RFC 6455 §5.3), checked as UTF-8 (§8.1) and handed to ``onMessage``.
        Anything else (fragments, pings, close, binary, reserved bits, unmasked,
        oversized, incomplete or non-minimally encoded frames, 64-bit lengths, pongs
        over 125 octets, invalid UTF-8) goes to Autobahn unchanged, which then handles
        it and everything after it: the answer never depends on how TCP split the
        bytes (tests/test_websocket_frames_differential.py).
        """
        pos, size = 0, len(data)
        cap = self.factory.max_frame_payload
        while size - pos >= 6 and self.state == _OPEN:
            first, second = data[pos], data[pos + 1]
            if second < 0x80 or (first != FIN_TEXT and first != FIN_PONG):
                break
            length = second & 0x7F
            key_at = pos + 2
            if length == 126:
                if size - pos < 8 or first == FIN_PONG:
                    break  # a control frame > 125 octets: Autobahn closes 1002 (§5.5)
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    break  # not the minimal length encoding: Autobahn closes 1002 (§5.2)
                key_at = pos + 4
            elif length == 127:
                break
            end = key_at + 4 + length
            if end > size or length > cap:
                break
            if first == FIN_PONG:
                pos = end
                continue
            masked = data[key_at + 4 : end]
            key = data[key_at : key_at + 4] * (length // 4 + 1)
            payload = (int.from_bytes(masked, "big") ^ int.from_bytes(key[:length], "big")
                       ).to_bytes(length, "big")
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # Autobahn closes with 1007
            pos = end
            self.onMessage(payload, False)
        return data[pos:] if pos else data

    def onConnect(self, request: Any) -> str:
        """Select ``jmap`` (WS-5); the handshake resource already refused the rest."""
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(400, "the jmap subprotocol is required")
        if self.principal is None:
            raise ConnectionDeny(401, "not authenticated")
        return SUBPROTOCOL

    def onOpen(self) -> None:
        factory = self.factory
        now = factory.clock.seconds()
        self._last_rx = now
        self._next_ping = now + factory.heartbeat
        self._timer = factory.app.wheel.call_later(
            min(factory.heartbeat, factory.client_timeout), self._tick)
        # The handshake text is never needed again; keep idle connections small.
        self.http_request_data = b""
        self.http_response_data = ""
        self.http_headers = {}

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        if isBinary:
            self.close(CLOSE_UNSUPPORTED_DATA, "binary messages are not supported")  # C-WS-2

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # The common case without Autobahn's eagerly formatted debug log line. Every
        # call carries one whole frame, so it may go out at once (see sendnow).
        if sync or chopsize or not _fastpath.ws_send_direct(self):
            super().sendData(data, sync, chopsize)
            return
        send_now(self.transport, data)
        _fastpath.ws_count_sent(self, len(data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self._stop_push()
        self.factory.forget(self)
        super().connectionLost(reason)

    def close(self, code: int, reason: str) -> None:
        """Leave the hub now, send Close ``code`` and abort if no answer comes in time."""
        self._stop_push()
        if self.state == _OPEN:
            _fastpath.ws_discard_rest(self)
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)
        elif self.state != _CLOSED:
            self._await_close()

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        """Every Close we start (ours, or Autobahn's 1007/1009) is bounded by our clock."""
        was_open = self.state == _OPEN
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        if was_open and not isReply:
            self._await_close()

    def _await_close(self) -> None:
        self._cancel_timer()
        self._timer = self.factory.app.wheel.call_later(CLOSE_GRACE_S, self._tick)

    # -- timers --

    def _tick(self) -> None:
        """Heartbeat ping, client timeout, or the end of the closing grace period."""
        self._timer = None
        if self.state != _OPEN:
            self.dropConnection(abort=True)
            return
        factory = self.factory
        now = factory.clock.seconds()
        deadline = self._last_rx + factory.client_timeout
        if now >= deadline:
            self.close(CLOSE_GOING_AWAY, "no traffic from the client")
            return
        if now >= self._next_ping:
            self.sendData(PING_FRAME)
            self._next_ping = now + factory.heartbeat
        self._timer = factory.app.wheel.call_later(min(self._next_ping, deadline) - now,
                                                   self._tick)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- flow control (IPushProducer) --

    def pauseProducing(self) -> None:
        """The client reads slower than we write: hold pushes, stop reading requests."""
        self._paused = True
        if self._push is not None:
            self._push.throttle.pause()
        self._transport().pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self._transport().resumeProducing()
        if self._push is not None:
            self._push.throttle.resume()

    def stopProducing(self) -> None:
        """connectionLost does the cleanup."""

    # -- messages --

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != _OPEN or isBinary:
            return
        try:
            kind, obj, request_id = parse_message(payload, self.factory.max_size_request)
            if kind == PUSH_ENABLE:
                self._enable_push(obj, request_id)
            elif kind == PUSH_DISABLE:
                self._stop_push()  # WS-20; a no-op when not enabled (C-WS-6)
            else:
                self._request(obj, request_id)
        except BadMessage as bad:
            self._problem(bad.problem, bad.request_id)

    def _request(self, obj: dict[str, Any], request_id: str | None) -> None:
        factory = self.factory
        if self._in_flight >= factory.max_concurrent:
            raise BadMessage(RequestProblem(
                "limit", f"more than {factory.max_concurrent} concurrent requests",
                limit="maxConcurrentRequests"), request_id)  # WS-15
        principal = self.principal
        assert principal is not None
        self._in_flight += 1
        try:
            result = run_eagerly(factory.app.processor.process(
                obj, principal, factory.app.session_state(principal), factory.services))
        except Exception:
            self._failed(Failure(), request_id)
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(self._answer, self._failed,
                                callbackArgs=(request_id,), errbackArgs=(request_id,))
        else:
            self._answer(result, request_id)

    def _answer(self, response: dict[str, Any], request_id: str | None) -> None:
        self._in_flight -= 1
        self._send_text(encode_response(response, request_id))

    def _failed(self, failure: Failure, request_id: str | None) -> None:
        self._in_flight -= 1
        if isinstance(failure.value, RequestProblem):
            self._problem(failure.value, request_id)
            return
        self._log.failure("WebSocket request crashed", failure)
        self._send_text(encode_request_error(problem_body(500, "internal error"), request_id))

    def _problem(self, problem: RequestProblem, request_id: str | None) -> None:
        self.factory.count_error(problem.kind)
        self._send_text(encode_request_error(problem.to_json(), request_id))

    def _send_text(self, payload: bytes) -> None:
        """One whole text message as one frame (no extension is ever negotiated)."""
        if self.state == _OPEN:
            self.sendData(text_frame(payload))

    # -- push --

    def _enable_push(self, obj: dict[str, Any], request_id: str | None) -> None:
        """WS-18; a second enable replaces the first and catches up again (C-WS-6)."""
        enable = parse_push_enable(obj, request_id)
        self._stop_push()
        factory = self.factory
        push = PushSession(factory.clock, factory.throttle_s, self.send_push, factory,
                           enable.types)
        self._push = push
        if self._paused:
            push.throttle.pause()
        principal = self.principal
        assert principal is not None
        push.start(factory.app.hub, principal.account_ids, enable.push_state)

    def send_push(self, frame: bytes) -> None:
        """Write one StateChange text frame (built by ``ws.frames``)."""
        if self.state == _OPEN:
            self.sendData(frame)
            self.factory.events_sent.inc()

    def _stop_push(self) -> None:
        push, self._push = self._push, None
        if push is not None:
            push.cancel()

    def refresh(self, principal: Principal) -> None:
        """Grants changed: later requests and pushes use the new account list."""
        self.principal = principal
        if self._push is not None:
            self._push.resubscribe(self.factory.app.hub, principal.account_ids)
