"""One JMAP WebSocket over an HTTP/1.1 upgrade: the Autobahn adapter of a JMAP conversation.

The JMAP logic (requests, push, grant changes) lives in the transport-neutral
:class:`~jmappushd.transports.websocket.conversation.Conversation`; this protocol is
its :class:`~jmappushd.transports.websocket.conversation.FrameSink` (whole frames out,
close codes, is-open), its registry member, and owns the wire: frame parsing,
heartbeat, closing handshake, flow control.

The principal was authenticated before the upgrade (see ``handshake``). Every
timer runs on the app's timer wheel (on its injected clock): one timer per
connection sends the heartbeat ping, enforces ``ws-client-timeout`` and, once we have sent a
Close, bounds the closing handshake; Autobahn's own timers (which use
``txaio.config.loop``) are all switched off by the factory. The connection is
the transport's push producer, so a slow reader pauses its StateChanges (they
keep merging in the throttle) and the reading of further requests. When the
connection is gone it writes its access-log line (status 101, or the handshake's
refusal; octets sent as Autobahn counts them; who closed it).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from jmappushd.auth.authenticator import Principal, UpstreamIdentity
from jmappushd.core.connections import EndReason
from jmappushd.net import _fastpath
from jmappushd.net.sendnow import send_now
from jmappushd.net.timerwheel import WheelTimer
from jmappushd.store.records import Account
from jmappushd.transports.websocket.conversation import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    Conversation,
)
from jmappushd.transports.websocket.frames import PING_FRAME, take_simple
from jmappushd.transports.websocket.heartbeat import heartbeat_step
from jmappushd.transports.websocket.messages import SUBPROTOCOL
from jmappushd.web.accesslog import Closed, SessionEntry

if TYPE_CHECKING:
    from jmappushd.transports.websocket.factory import JMAPWebSocketFactory

__all__ = ["CLOSE_GOING_AWAY", "CLOSE_GRACE_S", "CLOSE_POLICY_VIOLATION",
           "CLOSE_UNSUPPORTED_DATA", "JMAPWebSocketProtocol"]

CLOSE_GRACE_S = 2.0
"""How long a peer may take to answer our Close before the TCP connection is aborted."""

_OPEN = WebSocketServerProtocol.STATE_OPEN
_CLOSED = WebSocketServerProtocol.STATE_CLOSED


@implementer(IPushProducer)
class JMAPWebSocketProtocol(WebSocketServerProtocol):
    """The server side of RFC 8887 for one authenticated client."""

    __slots__ = ("_closed_by", "_http_status", "_last_rx", "_next_ping", "_timer", "access",
                 "conversation")
    factory: JMAPWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.conversation: Conversation | None = None
        self._timer: WheelTimer | None = None
        self._last_rx = 0.0
        self._next_ping = 0.0
        self.access: SessionEntry | None = None  # set by the factory; None: not logged
        self._closed_by: Closed | None = None
        self._http_status = 0

    @property
    def principal(self) -> Principal | None:
        """Who authenticated the upgrade (None until the factory attached the session)."""
        return None if self.conversation is None else self.conversation.principal

    # -- FrameSink --

    @property
    def writable(self) -> bool:
        return bool(self.state == _OPEN)

    def send_frame(self, frame: bytes) -> None:
        if self.state == _OPEN:
            self.sendData(frame)

    # -- registry member: delegated to the session --

    @property
    def user_id(self) -> str:
        assert self.conversation is not None
        return self.conversation.user_id

    @property
    def credential_id(self) -> str:
        assert self.conversation is not None
        return self.conversation.credential_id

    @property
    def account_ids(self) -> frozenset[str]:
        assert self.conversation is not None
        return self.conversation.account_ids

    @property
    def upstream(self) -> UpstreamIdentity | None:
        """Gateway mode: the login's upstream identity (its credential's re-check)."""
        return None if self.conversation is None else self.conversation.principal.upstream

    def end(self, reason: EndReason) -> None:
        """Shutdown (1001) or revoked credentials (1008, C-WS-5)."""
        if self.conversation is not None:
            self.conversation.end(reason)

    def grants_changed(self, accounts: tuple[Account, ...]) -> None:
        if self.conversation is not None:
            self.conversation.grants_changed(accounts)

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
            taken = take_simple(data, pos, cap)
            if taken is None:
                break
            pos, payload = taken
            if payload is not None:
                self.onMessage(payload, False)
        return data[pos:] if pos else data

    def onConnect(self, request: Any) -> str:
        """Select ``jmap`` (WS-5); the handshake resource already refused the rest."""
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(400, "the jmap subprotocol is required")
        if self.principal is None:
            raise ConnectionDeny(401, "not authenticated")
        return SUBPROTOCOL

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Autobahn refused the upgrade with an HTTP error (also for ConnectionDeny)."""
        self._http_status = code
        self._closed_by = self._closed_by or "server"
        super().failHandshake(reason, code, responseHeaders)

    def onOpen(self) -> None:
        self._http_status = 101
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
        self._log_end()

    def _log_end(self) -> None:
        """One access-log line per connection; a TCP drop without a Close is the client's."""
        access, self.access = self.access, None
        if access is None:
            return
        stats = self.trafficStats
        sent = 0 if stats is None else (stats.preopenOutgoingOctetsWireLevel
                                        + stats.outgoingOctetsWireLevel)
        access.end(self._http_status, sent, self._closed_by or "client")

    def close(self, code: int, reason: str) -> None:
        """Leave the hub now, send Close ``code`` and abort if no answer comes in time."""
        self._closed_by = self._closed_by or "server"
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
        if was_open and self._closed_by is None:
            self._closed_by = "client" if isReply else "server"
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
        beat = heartbeat_step(factory.clock.seconds(), self._last_rx, self._next_ping,
                              factory.client_timeout, factory.heartbeat)
        if beat.timed_out:
            self._closed_by = "timeout"
            self.close(CLOSE_GOING_AWAY, "no traffic from the client")
            return
        if beat.ping:
            self.sendData(PING_FRAME)
        self._next_ping = beat.next_ping
        self._timer = factory.app.wheel.call_later(beat.delay, self._tick)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- flow control (IPushProducer) --

    def pauseProducing(self) -> None:
        """The client reads slower than we write: hold pushes, stop reading requests."""
        if self.conversation is not None:
            self.conversation.pause()
        self._transport().pauseProducing()

    def resumeProducing(self) -> None:
        self._transport().resumeProducing()
        if self.conversation is not None:
            self.conversation.resume()

    def stopProducing(self) -> None:
        """connectionLost does the cleanup."""

    # -- messages: the session does the JMAP part --

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != _OPEN or isBinary or self.conversation is None:
            return
        self.conversation.message(payload)

    def _stop_push(self) -> None:
        if self.conversation is not None:
            self.conversation.stop_push()
