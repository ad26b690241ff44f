"""Every read of a library's private internals, in one place, each with a public fallback.

The hot paths measured in ``docs/benchmarks.rst`` skip a library's general code by
reading what it keeps privately: Twisted's TCP write queue (``send_now``), the
chunked state of a ``Request`` (EventSource events), the dict inside ``Headers``
(Web Push requests), what ``Agent.request`` derives from a URL (a Web Push POST to a
URL it has seen), CPython's C JSON encoder (``ijson.dumps``), Autobahn's
frame parser state (the WebSocket frame fast path), wsproto's (the same fast path
for a WebSocket over HTTP/2) and the ``h2`` library's buffers and flow-control
windows (the DATA frames of such a WebSocket). Each is a flag here, on when the
installed library still has what it reads. :func:`check` (called once at start-up)
re-verifies the *behaviour* each one reproduces against the library's own public
code; a path that no longer matches is switched off, so its callers use the public
API (``transport.write``, ``Request.write``, ``Headers(...)``, ``Agent.request``,
``JSONEncoder``,
Autobahn's ``dataReceived``, wsproto's ``receive_data``, h2's ``send_data`` and
``receive_data``), and is logged once. The
upper bounds in ``setup.cfg`` keep upgrades deliberate; this check keeps them safe.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from json import encoder as _json_encoder
from typing import TYPE_CHECKING, Any

from twisted.internet import abstract, task, tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import Logger
from twisted.web import http
from twisted.web._newclient import _ensureValidURI
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

if TYPE_CHECKING:
    from autobahn.twisted.websocket import WebSocketServerProtocol

_log = Logger()

TCP_SEND = all(hasattr(abstract.FileDescriptor, a)
               for a in ("dataBuffer", "offset", "_writeDisconnected", "connected",
                         "disconnecting"))
"""``send_now`` may call ``socket.send`` on a ``tcp.Server`` with an empty write queue."""

CHUNK_WRITE = all(hasattr(http.Request, a)
                  for a in ("chunked", "startedWriting", "finished", "_disconnected",
                            "sentLength"))
"""An EventSource event may be framed as one HTTP/1.1 chunk and sent at once."""

WHOLE_RESPONSE = all(hasattr(http.HTTPChannel, a) for a in ("writeHeaders", "write"))
"""A response whose body is written in one call may leave as one ``send()``: what
``Request.write`` gives the channel's transport is gathered and sent at once."""

RAW_HEADERS = "_rawHeaders" in getattr(Headers, "__slots__", ())
"""``Headers`` may be filled with already canonical, already checked names and values."""

AGENT_PLAN = all(hasattr(Agent, a)
                 for a in ("_requestWithEndpoint", "_getEndpoint", "_computeHostValue"))
"""A POST to a URL seen before may skip what ``Agent.request`` derives from the URL again:
its parsed URI, pool key, endpoint and ``Host`` value are kept (:class:`AgentPlan`)."""

C_ENCODER = getattr(_json_encoder, "c_make_encoder", None) is not None
"""One C JSON encoder may be built once and reused for every ``dumps``."""

WS_FRAMES = True
"""Whole small client frames may be parsed from the TCP chunk and Autobahn's state read;
set by :func:`check` (Autobahn is only imported there)."""

WSPROTO_FRAMES = True
"""Whole small client frames may be parsed from an HTTP/2 DATA payload when wsproto's
parser state reads as between frames; set by :func:`check`."""

H2_DATA = True
"""Plain DATA frames of an RFC 8441 tunnel may be framed and parsed outside ``h2``'s
state machines (its windows and buffers kept exactly); set by :func:`check`."""

_warned: set[str] = set()


# -- Twisted TCP: the write queue of a tcp.Server --


_WRITE_PATH = ("write", "writeSequence", "doWrite", "writeSomeData", "startWriting",
               "stopWriting", "loseConnection", "loseWriteConnection", "startTLS",
               "_postLoseConnection", "_closeWriteConnection", "_isSendBufferFull")
"""What a subclass of ``tcp.Server`` must inherit unchanged for a direct send to be
what its ``write`` would do (the guarded port's connections only add to
``connectionLost``)."""

_plain_servers: dict[type, bool] = {tcp.Server: True}


def _writes_as_tcp_server(cls: type) -> bool:
    """True if ``cls`` is ``tcp.Server`` or a subclass that keeps its whole write path."""
    plain = _plain_servers.get(cls)
    if plain is None:
        plain = issubclass(cls, tcp.Server) and all(
            getattr(cls, name, None) is getattr(tcp.Server, name, None)
            for name in _WRITE_PATH)
        _plain_servers[cls] = plain
    return plain


def tcp_idle_socket(transport: Any) -> socket.socket | None:
    """The socket of a plain TCP server connection with nothing queued, else ``None``.

    Reproduces the test Twisted's ``FileDescriptor.write`` leaves to ``doWrite``: data
    may go to the kernel now only if nothing is buffered (``_tempDataLen``, the unsent
    part of ``dataBuffer`` after ``offset``) and writing was not shut down. A subclass
    counts as plain when it leaves the write path alone (:func:`_writes_as_tcp_server`).
    """
    if (TCP_SEND and _writes_as_tcp_server(type(transport)) and transport.connected
            and not transport.disconnecting and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and not transport._writeDisconnected):
        sock: socket.socket = transport.socket
        return sock
    return None


# -- twisted.web: one chunk of a chunked response --


def chunk_transport(request: http.Request, data: bytes) -> Any:
    """The transport to send ``data`` on as a whole chunk, or ``None`` for ``Request.write``.

    Reproduces ``Request.write`` once the headers are out in chunked mode: it counts
    ``sentLength`` and writes ``toChunk(data)``. The caller sends :func:`chunk` itself
    so the chunk leaves at once instead of on the next reactor turn.
    """
    if (CHUNK_WRITE and data and request.chunked and request.startedWriting
            and not request.finished and not request._disconnected):
        request.sentLength += len(data)
        return request.channel.transport
    return None


def chunk(data: bytes) -> bytes:
    """HTTP/1.1 chunk framing, byte for byte ``twisted.web.http.toChunk``."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def raw_transport(request: http.Request) -> Any:
    """The connection's transport, for a response written before the request is parsed.

    ``HTTPChannel`` answers malformed requests the same way (a complete response
    straight to the transport, then ``loseConnection``); ``Request.write`` cannot,
    since it needs the request line that has not been parsed yet. Only public
    attributes (``Request.channel``, ``Protocol.transport``) are read.
    """
    channel = request.channel
    return channel.transport if channel is not None else None


# -- twisted.web: a whole response in one send --


class _Gathered:
    """Stands in for a channel's transport while ``Request.write`` runs: the bytes it is
    given are kept in order; anything else is the real transport's."""

    __slots__ = ("parts", "real")

    def __init__(self, real: object) -> None:
        self.real = real
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.parts.extend(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def whole_response(request: http.Request, body: bytes) -> tuple[Any, bytes] | None:
    """The TCP transport and the bytes of a whole response, or ``None`` for ``Request.write``.

    For the first and only write of a response with its ``Content-Length`` set: runs
    ``Request.write(body)`` itself with the channel's transport standing aside, so the
    status line, headers and body are Twisted's own bytes, gathered instead of queued.
    The caller sends them at once (``send_now``): one ``send()`` and no trip through the
    reactor's write set (two ``epoll_ctl`` calls and a poll per response otherwise).
    Only on a plain TCP connection with nothing queued; TLS, HTTP/2 and a busy
    connection keep Twisted's path.
    """
    channel = request.channel
    if (not WHOLE_RESPONSE or request.startedWriting or request.finished
            or request._disconnected or not isinstance(channel, http.HTTPChannel)
            or tcp_idle_socket(channel.transport) is None):
        return None
    transport = channel.transport
    gathered = _Gathered(transport)
    channel.transport = gathered  # type: ignore[assignment]
    try:
        request.write(body)
    finally:
        channel.transport = transport
    return transport, b"".join(gathered.parts)


# -- twisted.web: Headers --


def headers_from(raw: dict[bytes, list[bytes]]) -> Headers:
    """``Headers`` holding ``raw`` (canonical names, checked ASCII values) as given.

    Reproduces ``Headers(raw)`` without its per-name and per-value re-encoding.
    """
    if RAW_HEADERS:
        built = Headers()
        built._rawHeaders = raw
        return built
    return Headers(raw)


# -- twisted.web.client: what Agent.request derives from a URL --


@dataclass(frozen=True, slots=True)
class AgentPlan:
    """What ``Agent.request`` works out from one URL before it asks the pool for a
    connection; the same for every POST to that URL."""

    key: tuple[bytes, bytes, int]
    endpoint: IStreamClientEndpoint
    uri: URI
    path: bytes
    host: bytes
    """The ``Host`` header value ``Agent`` would add (the caller sends it)."""


def agent_plan(agent: IAgent, uri: bytes) -> AgentPlan | None:
    """``Agent.request``'s steps up to the connection, once, or ``None`` for ``agent.request``.

    Reproduces ``Agent.request``: the URI checked and parsed, the endpoint from the
    agent's endpoint factory (the SSRF-guarded one resolves and checks at each connect,
    not here), the pool key, the request path and the ``Host`` value. Only for an
    ``Agent`` itself (a subclass or another ``IAgent`` may do otherwise). Raises what
    ``Agent.request`` raises for a URI it refuses.
    """
    if not AGENT_PLAN or type(agent) is not Agent:
        return None
    parsed = URI.fromBytes(_ensureValidURI(uri.strip()))
    return AgentPlan((parsed.scheme, parsed.host, parsed.port), agent._getEndpoint(parsed),
                     parsed, parsed.originForm,
                     agent._computeHostValue(parsed.scheme, parsed.host, parsed.port))


def agent_request(agent: Agent, plan: AgentPlan, method: bytes, headers: Headers,
                  body: IBodyProducer | None) -> Deferred[IResponse]:
    """``agent.request`` for a planned URL; ``headers`` carry ``Host: plan.host`` last, as
    ``Agent`` would add it (so the headers are not copied to add it)."""
    return agent._requestWithEndpoint(plan.key, plan.endpoint, method, plan.uri, headers,
                                      body, plan.path)


# -- Autobahn: the frame parser's state and its send queue --


def ws_between_frames(proto: WebSocketServerProtocol) -> bool:
    """True when an open connection is between frames with nothing buffered.

    Only then may a whole frame be parsed outside Autobahn: its parser keeps a partly
    received frame in ``current_frame``/``data`` and a fragmented message open in
    ``inside_message``.
    """
    return bool(WS_FRAMES and proto.state == proto.STATE_OPEN
                and proto.current_frame is None and not proto.data
                and not proto.inside_message)


def ws_feed(proto: WebSocketServerProtocol, data: bytes) -> None:
    """Autobahn's ``dataReceived`` without the debug line it formats eagerly per call."""
    if WS_FRAMES:
        proto._dataReceived(data)
    else:
        from autobahn.twisted.websocket import WebSocketAdapterProtocol

        WebSocketAdapterProtocol.dataReceived(proto, data)


def ws_send_direct(proto: WebSocketServerProtocol) -> bool:
    """True when a whole frame may bypass Autobahn's ``sendData`` (nothing queued in it)."""
    return bool(WS_FRAMES and not proto.send_queue)


def ws_count_sent(proto: WebSocketServerProtocol, octets: int) -> None:
    """Count a directly sent frame in Autobahn's traffic statistics, as ``sendData`` does."""
    if proto.state == proto.STATE_OPEN:
        proto.trafficStats.outgoingOctetsWireLevel += octets


def ws_discard_rest(proto: WebSocketServerProtocol) -> None:
    """Make Autobahn drop the rest of any message, as it does when it fails a connection."""
    proto.failedByMe = True


# -- wsproto: the frame parser's state (WebSocket over HTTP/2) --


def wsproto_between_frames(ws: Any) -> bool:
    """True when the open wsproto ``Connection`` ``ws`` holds nothing: no event not yet
    taken, no byte of a partly received frame, no fragmented message open.

    Only then may a whole frame be parsed outside wsproto: its ``FrameDecoder`` keeps a
    partial header or payload in ``header``/``buffer``, its ``MessageDecoder`` the
    opcode (and UTF-8 state) of a fragmented message in ``opcode``.
    """
    if not WSPROTO_FRAMES:
        return False
    proto = ws._proto
    decoder = proto._frame_decoder
    return bool(decoder.header is None and not decoder.buffer.buffer
                and proto._message_decoder.opcode is None and not ws._events)


# -- h2: plain DATA frames on open streams --

_DATA_HEAD = struct.Struct(">BHBBL")
"""A DATA frame header: 24-bit length (high octet, low 16 bits), type 0, flags, id."""


def h2_send_data(conn: Any, stream_id: int, data: bytes) -> bool:
    """Append one DATA frame (no flags, no padding) carrying ``data`` to ``h2``'s output
    as ``H2Connection.send_data(stream_id, data)`` does, or return False (then call it).

    Reproduces, for a non-empty frame within both windows and the peer's frame size on
    a stream that is open for sending: no state change (SEND_DATA keeps the connection
    in SERVER_OPEN and the stream in OPEN or HALF_CLOSED_REMOTE), both outbound windows
    reduced by the length, the serialised frame appended to ``_data_to_send``; what it
    skips is the state machines' lookups, the frame object and the debug log lines.
    """
    if not H2_DATA:
        return False
    from h2.connection import ConnectionState
    from h2.stream import StreamState

    n = len(data)
    stream = conn.streams.get(stream_id)
    if (stream is None or not n or conn.state_machine.state is not ConnectionState.SERVER_OPEN
            or stream.state_machine.state not in (StreamState.OPEN,
                                                  StreamState.HALF_CLOSED_REMOTE)
            or n > conn.max_outbound_frame_size or n > conn.outbound_flow_control_window
            or n > stream.outbound_flow_control_window):
        return False
    out = conn._data_to_send
    out += _DATA_HEAD.pack(n >> 16, n & 0xFFFF, 0, 0, stream_id)
    out += data
    stream.outbound_flow_control_window -= n
    conn.outbound_flow_control_window -= n
    return True


def h2_take_data(conn: Any, data: bytes, tunnels: Any) -> tuple[list[tuple[int, bytes]], int]:
    """The plain DATA frames at the start of ``data`` for streams in ``tunnels``, taken
    as ``H2Connection.receive_data`` would take them, and where the rest begins (for
    ``receive_data``); nothing when ``h2`` holds a partial frame, preamble or header
    block, or the connection is not open.

    Reproduces ``receive_data`` for a whole DATA frame without flags (no END_STREAM,
    no padding) and with the reserved bit clear, within the maximum frame size and both
    receive windows, on an open stream whose headers arrived and which declared no
    content length: both inbound window managers shrink by the length, the stream
    counts the octets, and the event would be a ``DataReceived`` with that payload and
    that flow-controlled length. Anything else (another frame type or flag, a window
    overrun, a closed stream, a partial frame) stops the take, and ``h2`` gets the rest,
    so its errors stay its own.
    """
    taken: list[tuple[int, bytes]] = []
    if not H2_DATA:
        return taken, 0
    from h2.connection import ConnectionState
    from h2.stream import StreamState

    buffer = conn.incoming_buffer
    if (buffer._data or buffer._preamble_len or buffer._headers_buffer
            or conn.state_machine.state is not ConnectionState.SERVER_OPEN):
        return taken, 0
    pos, size = 0, len(data)
    limit = conn.max_inbound_frame_size
    window = conn._inbound_flow_control_window_manager
    streams = conn.streams
    while size - pos >= 9:
        high, low, kind, flags, stream_id = _DATA_HEAD.unpack_from(data, pos)
        n = high << 16 | low
        end = pos + 9 + n
        if (kind or flags or not n or n > limit or end > size or stream_id not in tunnels
                or n > window.current_window_size):
            break
        stream = streams.get(stream_id)
        if (stream is None or stream.state_machine.state is not StreamState.OPEN
                or not stream.state_machine.headers_received
                or stream._expected_content_length is not None
                or n > stream._inbound_window_manager.current_window_size):
            break
        window.current_window_size -= n
        stream._inbound_window_manager.current_window_size -= n
        stream._actual_content_length += n
        taken.append((stream_id, data[pos + 9 : end]))
        pos = end
    return taken, pos


# -- CPython json: the C encoder --


def c_encoder(default: Callable[[Any], Any]) -> Callable[[Any, int], list[str]] | None:
    """A reusable C encoder for compact, non-ASCII-escaping, NaN-refusing JSON, or ``None``.

    Reproduces ``JSONEncoder(separators=(",", ":"), ensure_ascii=False,
    allow_nan=False).encode`` for dicts, which builds this same encoder on every call.
    """
    make = getattr(_json_encoder, "c_make_encoder", None)
    if make is None:
        return None
    built: Callable[[Any, int], list[str]] = make(
        None, default, _json_encoder.encode_basestring, None, ":", ",", False, False, False)
    return built


# -- the start-up check --


def check() -> list[str]:
    """Verify every fast path against the installed libraries; return the ones switched off.

    Call once at start-up: each path whose library no longer behaves as it reproduces
    is turned off (its callers then use the public API) and logged once.
    """
    global TCP_SEND, CHUNK_WRITE, WHOLE_RESPONSE, RAW_HEADERS, C_ENCODER, WS_FRAMES
    global WSPROTO_FRAMES, H2_DATA, AGENT_PLAN
    # Each probe runs the fast path itself, so every path is on while they run.
    TCP_SEND = CHUNK_WRITE = RAW_HEADERS = C_ENCODER = WS_FRAMES = WSPROTO_FRAMES = True
    WHOLE_RESPONSE = H2_DATA = AGENT_PLAN = True
    TCP_SEND = _passes(_probe_tcp_send)
    CHUNK_WRITE = _passes(_probe_chunk_write)
    WHOLE_RESPONSE = TCP_SEND and _passes(_probe_whole_response)
    RAW_HEADERS = _passes(_probe_headers)
    AGENT_PLAN = _passes(_probe_agent_plan)
    C_ENCODER = _passes(_probe_c_encoder)
    WS_FRAMES = _passes(_probe_ws_frames)
    WSPROTO_FRAMES = _passes(_probe_wsproto_frames)
    H2_DATA = _passes(_probe_h2_data)
    flags = {"tcp-send": TCP_SEND, "chunk-write": CHUNK_WRITE,
             "whole-response": WHOLE_RESPONSE, "raw-headers": RAW_HEADERS,
             "agent-plan": AGENT_PLAN,
             "c-json-encoder": C_ENCODER, "websocket-frames": WS_FRAMES,
             "wsproto-frames": WSPROTO_FRAMES, "h2-data": H2_DATA}
    missing = [name for name, on in flags.items() if not on]
    for name in missing:
        if name not in _warned:
            _warned.add(name)
            _log.warn("fast path {path} is off: the installed library no longer has what "
                      "it reads; using the public API", path=name)
    return missing


def _passes(probe: Callable[[], bool]) -> bool:
    """A probe that raises (an attribute gone, a changed signature) has failed."""
    try:
        return probe()
    except Exception:
        return False


def _probe_tcp_send() -> bool:
    """A queued write shows in ``_tempDataLen``; with the queue empty a send is direct."""
    ours, theirs = socket.socketpair()
    try:
        # A bare Server for the probe: no listening Port, a protocol that only connects.
        server = tcp.Server(ours, _Null(), ("127.0.0.1", 1), None, 0,  # type: ignore[arg-type]
                            MemoryReactor())
        if tcp_idle_socket(server) is not ours:
            return False
        server.write(b"q")
        return tcp_idle_socket(server) is None and server._tempDataLen == 1
    finally:
        ours.close()
        theirs.close()


def _probe_chunk_write() -> bool:
    """Our framing of a second write equals ``Request.write``'s, and so does its count."""
    public, fast = _started_request(), _started_request()
    wire_of = public.channel.transport
    assert isinstance(wire_of, StringTransport)
    before = wire_of.value()
    public.write(b"event")
    wire = wire_of.value()[len(before):]
    transport = chunk_transport(fast, b"event")
    if transport is None:
        return False
    transport.write(chunk(b"event"))
    return (wire == chunk(b"event") == transport.value()[len(before):]
            and public.sentLength == fast.sentLength)


def _probe_whole_response() -> bool:
    """Gathered, a whole response is byte for byte what ``Request.write`` queues, and
    the request and channel are left as ``Request.write`` leaves them."""
    ours, theirs = _loopback_pair()
    try:
        requests = []
        for transport in (StringTransport(), tcp.Server(
                ours, _Null(), ("127.0.0.1", 1), None, 0,  # type: ignore[arg-type]
                MemoryReactor())):
            channel = http.HTTPChannel()
            channel.timeOut = None
            channel.makeConnection(transport)
            request = http.Request(channel)
            request.clientproto, request.method = b"HTTP/1.1", b"POST"
            request.setResponseCode(202)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"2")
            requests.append(request)
        public, fast = requests
        public.write(b"{}")
        wire_of = public.channel.transport
        assert isinstance(wire_of, StringTransport)
        got = whole_response(fast, b"{}")
        return (got is not None and got[1] == wire_of.value()
                and got[0] is fast.channel.transport
                and fast.startedWriting == public.startedWriting
                and fast.sentLength == public.sentLength and not fast.chunked)
    finally:
        ours.close()
        theirs.close()


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a TCP connection on 127.0.0.1 (a ``tcp.Server`` asks for addresses)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname()[:2])
        ours, _ = listener.accept()
    return ours, theirs


def _started_request() -> http.Request:
    """A GET over HTTP/1.1 whose headers and first chunk are written."""
    channel = http.HTTPChannel()
    channel.timeOut = None
    channel.makeConnection(StringTransport())
    request = http.Request(channel)
    request.clientproto, request.method = b"HTTP/1.1", b"GET"
    request.write(b"first")
    return request


def _probe_headers() -> bool:
    """Filled directly, ``Headers`` equals the public constructor's and answers lookups."""
    if "_rawHeaders" not in getattr(Headers, "__slots__", ()):
        return False
    raw = {b"Content-Encoding": [b"aes128gcm"], b"Ttl": [b"60"]}
    built = headers_from(dict(raw))
    return (built == Headers(raw)
            and built.getRawHeaders(b"ttl") == [b"60"]
            and sorted(built.getAllRawHeaders()) == sorted(raw.items()))


_PROBE_URIS = (b"https://push.example/wpush/v2/AbC-d_e", b"http://push.example:8080/a;p?q=1#f",
               b"https://[2001:db8::1]:8443/x", b"https://[2001:db8::2]/", b" http://h/ ")


def _probe_agent_plan() -> bool:
    """For each URI, a planned POST puts on the wire the bytes ``Agent.request`` puts there,
    over an endpoint made from the same URI, and gets the same answer."""
    for uri in _PROBE_URIS:
        public, planned = _PlanAgent.make(), _PlanAgent.make()
        plan = agent_plan(planned[0], uri)
        if plan is None:
            return False
        # A fixed header first: the planned POST carries Host last, as Agent adds it.
        fixed = {b"Content-Encoding": [b"aes128gcm"]}
        answers = [public[0].request(b"POST", uri, Headers(fixed), _Bytes(b"sealed")),
                   agent_request(planned[0], plan, b"POST", Headers(
                       fixed | {b"Host": [plan.host]}), _Bytes(b"sealed"))]
        wires = [side[1].answer() for side in (public, planned)]
        codes = [getattr(d.result, "code", None) if IResponse.providedBy(d.result) else None
                 for d in answers]
        for answer in answers:
            answer.addErrback(lambda _: None)  # a failed probe is its answer, not an error
        if (wires[0] != wires[1] or codes != [201, 201]
                or public[1].uris != planned[1].uris
                or plan.key != (plan.uri.scheme, plan.uri.host, plan.uri.port)):
            return False
    return True


@implementer(IBodyProducer)
class _Bytes:
    """A body producer of known length that writes at once (the probe's request body)."""

    def __init__(self, body: bytes) -> None:
        self.body, self.length = body, len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Written whole at once: nothing to pause."""

    def resumeProducing(self) -> None:
        """Written whole at once: nothing to resume."""

    def stopProducing(self) -> None:
        """Written whole at once: nothing to stop."""


class _PlanAgent:
    """An endpoint factory for the probe: it records each URI it is asked for and
    connects an ``HTTP11ClientProtocol`` to a ``StringTransport`` at once."""

    def __init__(self) -> None:
        self.uris: list[bytes] = []
        self.protocols: list[Any] = []

    @classmethod
    def make(cls) -> tuple[Agent, _PlanAgent]:
        clock = task.Clock()
        factory = cls()
        return Agent.usingEndpointFactory(clock, factory, HTTPConnectionPool(clock)), factory

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        self.uris.append(uri.toBytes())
        return self  # type: ignore[return-value]

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        protocol = protocol_factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)

    def answer(self) -> bytes:
        """What the one connection was sent; then the service's 201 to it."""
        (protocol,) = self.protocols
        wire: bytes = protocol.transport.value()
        protocol.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        return wire


def _probe_c_encoder() -> bool:
    """The reused encoder's output equals ``json.dumps`` with the same options."""
    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    encode = c_encoder(plain.default)
    sample = {"@type": "StateChange", "é": [1, 2.5, None, True, "\u2028\n"], "n": {}}
    return encode is not None and "".join(encode(sample, 0)) == plain.encode(sample)


def _probe_ws_frames() -> bool:
    """Autobahn's parser state reads as the WebSocket fast path expects it to.

    A real Autobahn server protocol on a ``StringTransport`` is opened and fed a text
    frame in two parts: between frames it must look idle, inside one it must not, and
    the message must arrive whole; a directly sent frame must be countable.
    """
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    got: list[bytes] = []

    class Probe(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            got.append(payload)

    factory = WebSocketServerFactory(reactor=MemoryReactor())
    factory.protocol = Probe
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                               autoPingInterval=0)
    proto: WebSocketServerProtocol = Probe()
    proto.factory = factory
    proto.makeConnection(StringTransport())
    proto.dataReceived(_PROBE_HANDSHAKE)
    frame = b"\x81\x82\x00\x00\x00\x00ok"  # masked "ok" with a zero key
    opened = ws_between_frames(proto) and ws_send_direct(proto)
    ws_feed(proto, frame[:5])
    inside = not ws_between_frames(proto)
    ws_feed(proto, frame[5:])
    before = proto.trafficStats.outgoingOctetsWireLevel
    ws_count_sent(proto, 3)
    counted = proto.trafficStats.outgoingOctetsWireLevel == before + 3
    return opened and inside and ws_between_frames(proto) and got == [b"ok"] and counted


def _probe_wsproto_frames() -> bool:
    """wsproto's parser state reads as the HTTP/2 WebSocket fast path expects it to.

    A server ``Connection`` is fed a masked text frame in two parts (idle before, not
    idle inside, idle after, the message whole), then the first frame of a fragmented
    message (not idle until its last frame has passed).
    """
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    ws = Connection(ConnectionType.SERVER)
    frame = b"\x81\x82\x00\x00\x00\x00ok"  # masked "ok" with a zero key
    idle = wsproto_between_frames(ws)
    ws.receive_data(frame[:5])
    partial = list(ws.events())
    inside = not wsproto_between_frames(ws)
    ws.receive_data(frame[5:])
    got = [e.data for e in ws.events() if isinstance(e, TextMessage) and e.message_finished]
    after = wsproto_between_frames(ws)
    ws.receive_data(b"\x01\x81\x00\x00\x00\x00o")  # not final
    list(ws.events())
    fragmented = not wsproto_between_frames(ws)
    ws.receive_data(b"\x80\x81\x00\x00\x00\x00k")  # its final continuation
    list(ws.events())
    return (idle and not partial and inside and got == ["ok"] and after and fragmented
            and wsproto_between_frames(ws))


def h2_pair(server_window: int = 65_535) -> tuple[Any, Any, int]:
    """A client and a server ``H2Connection`` past their preface and SETTINGS exchange,
    with stream 1 open both ways (request HEADERS, a 200) and everything flushed
    between them; also the differential tests' fixture."""
    import h2.config
    import h2.connection

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    if server_window != 65_535:
        server.increment_flow_control_window(server_window - 65_535)
    client.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":path", "/"),
                            (":authority", "probe")])
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")])  # the tunnel's answer: DATA may follow
    for _ in range(3):
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())
    return client, server, 1


def h2_state(conn: Any, stream_id: int) -> tuple[Any, ...]:
    """Everything of ``conn`` that DATA frames on ``stream_id`` change."""
    stream = conn.streams[stream_id]
    return (conn.state_machine.state, stream.state_machine.state,
            conn.outbound_flow_control_window, stream.outbound_flow_control_window,
            conn._inbound_flow_control_window_manager.current_window_size,
            stream._inbound_window_manager.current_window_size,
            stream._actual_content_length, bytes(conn._data_to_send))


def _probe_h2_data() -> bool:
    """Both DATA paths leave an ``h2`` connection as its own ``send_data`` and
    ``receive_data`` do: the same bytes out, the same windows and counts, the same
    payloads in; and they decline what is not theirs (a flag, a partial frame)."""
    import h2.events

    payloads = [b"x", b"hello" * 40]
    ours, theirs = h2_pair(), h2_pair()
    for (_, server, sid), fast in ((ours, True), (theirs, False)):
        for data in payloads:
            if fast:
                if not h2_send_data(server, sid, data):
                    return False
            else:
                server.send_data(sid, data)
    if h2_state(ours[1], 1) != h2_state(theirs[1], 1):
        return False
    client, server, sid = h2_pair()
    for data in payloads:
        client.send_data(sid, data)
    wire = client.data_to_send()
    twin = h2_pair()[1]
    events = [(e.stream_id, e.data) for e in twin.receive_data(wire)
              if isinstance(e, h2.events.DataReceived)]
    taken, pos = h2_take_data(server, wire + wire[:5], {sid})
    client.send_data(sid, b"end", end_stream=True)
    flagged, at = h2_take_data(server, client.data_to_send(), {sid})
    return (taken == events and pos == len(wire) and h2_state(server, 1) == h2_state(twin, 1)
            and not flagged and at == 0)


_PROBE_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n")


class _Null:
    """The least a ``tcp.Server`` needs from its protocol for the probe."""

    def makeConnection(self, transport: object) -> None:
        """Nothing to set up."""
