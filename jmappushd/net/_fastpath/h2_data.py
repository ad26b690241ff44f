"""h2: plain DATA frames on open streams (a WebSocket over HTTP/2), framed and parsed
outside ``h2``'s state machines with its windows and buffers kept exactly."""

from __future__ import annotations

import struct
from typing import Any

H2_DATA = True
"""Plain DATA frames of an RFC 8441 tunnel may be framed and parsed outside ``h2``'s
state machines (its windows and buffers kept exactly); set by
:func:`jmappushd.net._fastpath.check`."""


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


def probe_h2_data() -> bool:
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
