"""One JMAP WebSocket over an HTTP/2 stream (RFC 8441): the h2 adapter of a conversation.

The same :class:`~jmappushd.transports.websocket.conversation.Conversation` as over
an HTTP/1.1 upgrade (``protocol.py``); this class is its frame sink and registry
member on a :class:`~jmappushd.web.h2connect.Tunnel`, and owns the wire as the
Autobahn adapter does: RFC 6455 frames are parsed by wsproto's post-handshake
connection (masking required, UTF-8 checked, control frames, close codes), except
whole small masked text frames and pongs, taken straight from the DATA payload as
``protocol.py`` takes them from the TCP chunk (:meth:`H2WebSocket._take_whole_frames`);
our frames are the prebuilt ones of ``frames.py``; one timer on the app's wheel sends the
heartbeat ping, enforces ``ws-client-timeout`` and bounds our closing handshake.
Messages above the factory's hard cap close with 1009, binary ones with 1003.

The closing handshake ends the stream (END_STREAM, RFC 8441 §4's FIN) once both
Close frames have passed; the client's END_STREAM without a Close, or its
RST_STREAM, ends the session as a TCP drop would; a peer that does not answer our
Close within :data:`CLOSE_GRACE_S` has its stream reset. While the stream's window
or the TCP connection is blocked, pushes are held (merged by the throttle) and the
client's further frames are not read, exactly as a paused TCP transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.web.server import Request
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from jmappushd.auth.authenticator import Principal, UpstreamIdentity
from jmappushd.core.connections import EndReason
from jmappushd.net import _fastpath
from jmappushd.net.timerwheel import WheelTimer
from jmappushd.store.records import Account
from jmappushd.transports.websocket.conversation import (
    CLOSE_GOING_AWAY,
    CLOSE_UNSUPPORTED_DATA,
    Conversation,
)
from jmappushd.transports.websocket.frames import PING_FRAME, take_simple
from jmappushd.transports.websocket.heartbeat import heartbeat_step
from jmappushd.transports.websocket.messages import SUBPROTOCOL
from jmappushd.web.accesslog import Closed, SessionEntry
from jmappushd.web.h2connect import Tunnel, open_tunnel
from jmappushd.web.site import session_entry

if TYPE_CHECKING:
    from jmappushd.transports.websocket.factory import JMAPWebSocketFactory

CLOSE_GRACE_S = 2.0
"""How long a peer may take to answer our Close before its stream is reset."""
CLOSE_MESSAGE_TOO_BIG = 1009

_OPEN = ConnectionState.OPEN
_CLOSED = ConnectionState.CLOSED


def accept(factory: JMAPWebSocketFactory, request: Request, principal: Principal,
           password_fp: bytes | None) -> H2WebSocket:
    """Answer the authenticated extended CONNECT ``request`` with ``:status 200`` and run
    the JMAP session on its stream."""
    ws = H2WebSocket(factory, principal, session_entry(request))
    tunnel = open_tunnel(request, ws, {b"sec-websocket-protocol": SUBPROTOCOL.encode()})
    ws.start(tunnel, password_fp)
    return ws


class H2WebSocket:
    """The server side of RFC 8887 on one HTTP/2 stream, for one authenticated client."""

    __slots__ = ("_closed_by", "_factory", "_last_rx", "_message", "_message_size",
                 "_next_ping", "_timer", "_tunnel", "_ws", "access", "conversation")
    log = Logger()

    def __init__(self, factory: JMAPWebSocketFactory, principal: Principal,
                 access: SessionEntry | None) -> None:
        self._factory = factory
        self.conversation = Conversation(factory.conversation_context, self, principal)
        self.access = access
        self._ws = Connection(ConnectionType.SERVER)
        self._tunnel: Tunnel | None = None
        self._timer: WheelTimer | None = None
        self._closed_by: Closed | None = None
        self._message: list[bytes] = []
        self._message_size = 0
        now = factory.clock.seconds()
        self._last_rx = now
        self._next_ping = now + factory.heartbeat

    def start(self, tunnel: Tunnel, password_fp: bytes | None) -> None:
        """The 200 is sent: join the registry, start the timer, read the client."""
        factory = self._factory
        self._tunnel = tunnel
        factory.registry.add(self, password_fp)
        if password_fp is None:
            factory.registry.remember_password(self)
        self._timer = factory.app.wheel.call_later(
            min(factory.heartbeat, factory.client_timeout), self._tick)
        tunnel.resume_reading()

    @property
    def principal(self) -> Principal:
        return self.conversation.principal

    # -- registry member --

    @property
    def user_id(self) -> str:
        return self.conversation.user_id

    @property
    def credential_id(self) -> str:
        return self.conversation.credential_id

    @property
    def account_ids(self) -> frozenset[str]:
        return self.conversation.account_ids

    @property
    def upstream(self) -> UpstreamIdentity | None:
        """Gateway mode: the login's upstream identity (its credential's re-check)."""
        return self.conversation.principal.upstream

    def end(self, reason: EndReason) -> None:
        """Shutdown (1001) or revoked credentials (1008, C-WS-5)."""
        self.conversation.end(reason)

    def grants_changed(self, accounts: tuple[Account, ...]) -> None:
        self.conversation.grants_changed(accounts)

    # -- FrameSink --

    @property
    def writable(self) -> bool:
        tunnel = self._tunnel
        return self._ws.state is _OPEN and tunnel is not None and tunnel.writable

    def send_frame(self, frame: bytes) -> None:
        if self.writable:
            assert self._tunnel is not None
            self._tunnel.write(frame)

    def close(self, code: int, reason: str) -> None:
        """Leave the hub now, send Close ``code`` and reset if no answer comes in time."""
        self._closed_by = self._closed_by or "server"
        self.conversation.stop_push()
        if self._ws.state is _OPEN:
            self._send_close(code, reason)
            self._await_close()

    def _send_close(self, code: int, reason: str) -> None:
        try:
            data = self._ws.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            return
        if self._tunnel is not None:
            self._tunnel.write(data)

    def _await_close(self) -> None:
        self._cancel_timer()
        self._timer = self._factory.app.wheel.call_later(CLOSE_GRACE_S, self._tick)

    # -- TunnelHandler --

    def tunnel_data(self, data: bytes) -> None:
        self._last_rx = self._factory.clock.seconds()
        ws = self._ws
        if ws.state not in (_OPEN, ConnectionState.LOCAL_CLOSING):
            return  # after the client's Close nothing more counts
        if ws.state is _OPEN and _fastpath.wsproto_between_frames(ws):
            data = self._take_whole_frames(data)
            if not data:
                return
            if ws.state is not _OPEN:
                # A message closed the session: wsproto gets the rest unread, as when
                # it had parsed the whole payload and we stopped at that message.
                ws.receive_data(data)
                return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage):
                self._text(event.data, event.message_finished)
            elif isinstance(event, Ping):
                self._pong(event)
            elif isinstance(event, CloseConnection):
                self._closing(event)
                return
            elif isinstance(event, BytesMessage):
                self.close(CLOSE_UNSUPPORTED_DATA, "binary messages are not supported")
                return
            if ws.state is not _OPEN:
                return

    def _take_whole_frames(self, data: bytes) -> bytes:
        """Handle the common frames here; return the rest, from the first other one, for
        wsproto (which must be between frames: :func:`_fastpath.wsproto_between_frames`).

        Whole, final, masked text frames within the message cap (unmasked per RFC 6455
        §5.3, checked as UTF-8 per §8.1) go to the conversation, whole masked pongs of
        at most 125 octets are dropped (wsproto's Pong event is ignored too). Anything
        else (fragments, pings, close, binary, reserved bits, unmasked, oversized,
        incomplete or non-minimally encoded frames, 64-bit lengths, invalid UTF-8) is
        left to wsproto with everything after it, so the answer never depends on how
        the client's bytes were split into DATA frames
        (tests/test_http2_frames_differential.py)."""
        pos, size = 0, len(data)
        cap = self._factory.max_frame_payload
        ws = self._ws
        conversation = self.conversation
        while size - pos >= 6 and ws.state is _OPEN:
            taken = take_simple(data, pos, cap)
            if taken is None:
                break
            pos, payload = taken
            if payload is not None:
                conversation.message(payload)
        return data[pos:] if pos else data

    def _text(self, data: str, finished: bool) -> None:
        if self._ws.state is not _OPEN:
            return
        chunk = data.encode("utf-8")
        self._message_size += len(chunk)
        if self._message_size > self._factory.max_frame_payload:  # WS-22, C-WS-4
            self._message = []
            self.close(CLOSE_MESSAGE_TOO_BIG, "message too big")
            return
        if not finished:
            self._message.append(chunk)
            return
        parts, self._message, self._message_size = self._message, [], 0
        payload = b"".join(parts) + chunk if parts else chunk
        self.conversation.message(payload)

    def _pong(self, ping: Ping) -> None:
        if self._tunnel is not None and self._ws.state is _OPEN:
            self._tunnel.write(self._ws.send(ping.response()))

    def _closing(self, event: CloseConnection) -> None:
        """A Close arrived, or the frames broke the protocol (wsproto says so as a Close
        event in the OPEN state, with the code to send: 1002, 1007)."""
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:  # the client closes: echo its code
            self._closed_by = self._closed_by or "client"
            self.conversation.stop_push()
            self._send_close(event.code, "")
        elif state is _OPEN:
            self._closed_by = "server"
            self.conversation.stop_push()
            self._send_close(event.code, event.reason or "")
        if self._tunnel is not None:
            self._tunnel.finish()  # both Close frames passed (or the peer is broken)

    def tunnel_ended(self) -> None:
        """END_STREAM: the client will send nothing more (its TCP FIN)."""
        self._closed_by = self._closed_by or "client"
        self.conversation.stop_push()
        if self._tunnel is not None:
            self._tunnel.finish()

    def tunnel_closed(self) -> None:
        self._cancel_timer()
        self.conversation.stop_push()
        self._factory.registry.discard(self)
        access, self.access = self.access, None
        if access is not None:
            sent = 0 if self._tunnel is None else self._tunnel.sent
            access.end(200, sent, self._closed_by or "client")

    def pause_writing(self) -> None:
        """The stream's window or TCP is full: hold pushes, stop reading requests."""
        self.conversation.pause()
        if self._tunnel is not None:
            self._tunnel.pause_reading()

    def resume_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.resume_reading()
        self.conversation.resume()

    # -- timers --

    def _tick(self) -> None:
        """Heartbeat ping, client timeout, or the end of the closing grace period."""
        self._timer = None
        tunnel = self._tunnel
        if tunnel is None or tunnel.closed:
            return
        if self._ws.state is not _OPEN:
            tunnel.abort()
            return
        factory = self._factory
        beat = heartbeat_step(factory.clock.seconds(), self._last_rx, self._next_ping,
                              factory.client_timeout, factory.heartbeat)
        if beat.timed_out:
            self._closed_by = "timeout"
            self.close(CLOSE_GOING_AWAY, "no traffic from the client")
            return
        if beat.ping:
            tunnel.write(PING_FRAME)
        self._next_ping = beat.next_ping
        self._timer = factory.app.wheel.call_later(beat.delay, self._tick)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
