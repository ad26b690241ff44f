"""Every read of a library's private internals, in one place, each with a public fallback.

The hot paths measured in ``docs/benchmarks.rst`` skip a library's general code by
reading what it keeps privately, one module per library:

* :mod:`.tcpwrite`: Twisted's TCP write queue (``send_now``);
* :mod:`.webserver`: the chunked state of a ``Request`` (EventSource events), a whole
  response gathered from ``Request.write``;
* :mod:`.agent`: what ``Agent.request`` derives from a URL (a Web Push POST to a URL
  it has seen) and the dict inside ``Headers`` (that POST's headers);
* :mod:`.cjson`: CPython's C JSON encoder (``ijson.dumps``);
* :mod:`.websocket`: Autobahn's frame parser state (the WebSocket frame fast path);
* :mod:`.wsproto_state`: wsproto's (the same fast path for a WebSocket over HTTP/2);
* :mod:`.h2_data`: the ``h2`` library's buffers and flow-control windows (the DATA
  frames of such a WebSocket).

Each path is a flag in its module, on when the installed library still has what it
reads. :func:`check` (called once at start-up) re-verifies the *behaviour* each one
reproduces against the library's own public code; a path that no longer matches is
switched off, so its callers use the public API (``transport.write``,
``Request.write``, ``Headers(...)``, ``Agent.request``, ``JSONEncoder``, Autobahn's
``dataReceived``, wsproto's ``receive_data``, h2's ``send_data`` and
``receive_data``), and is logged once. The upper bounds in ``setup.cfg`` keep upgrades
deliberate; this check keeps them safe. The functions callers use are importable from
this package itself.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from jmappushd.net._fastpath import (
    agent,
    cjson,
    h2_data,
    tcpwrite,
    webserver,
    websocket,
    wsproto_state,
)
from jmappushd.net._fastpath.agent import AgentPlan, agent_plan, agent_request, headers_from
from jmappushd.net._fastpath.cjson import c_encoder
from jmappushd.net._fastpath.h2_data import h2_pair, h2_send_data, h2_state, h2_take_data
from jmappushd.net._fastpath.tcpwrite import tcp_idle_socket
from jmappushd.net._fastpath.webserver import (
    chunk,
    chunk_transport,
    raw_transport,
    whole_response,
)
from jmappushd.net._fastpath.websocket import (
    ws_between_frames,
    ws_count_sent,
    ws_discard_rest,
    ws_feed,
    ws_send_direct,
)
from jmappushd.net._fastpath.wsproto_state import wsproto_between_frames

__all__ = [
    "AgentPlan", "agent", "agent_plan", "agent_request", "c_encoder", "check", "chunk",
    "chunk_transport", "cjson", "h2_data", "h2_pair", "h2_send_data", "h2_state",
    "h2_take_data", "headers_from", "raw_transport", "tcp_idle_socket", "tcpwrite",
    "webserver", "websocket", "whole_response", "ws_between_frames", "ws_count_sent",
    "ws_discard_rest", "ws_feed", "ws_send_direct", "wsproto_between_frames",
    "wsproto_state",
]

_log = Logger()

_warned: set[str] = set()


def check() -> list[str]:
    """Verify every fast path against the installed libraries; return the ones switched off.

    Call once at start-up: each path whose library no longer behaves as it reproduces
    is turned off (its callers then use the public API) and logged once.
    """
    # Each probe runs the fast path itself, so every path is on while they run.
    tcpwrite.TCP_SEND = webserver.CHUNK_WRITE = webserver.WHOLE_RESPONSE = True
    agent.RAW_HEADERS = agent.AGENT_PLAN = cjson.C_ENCODER = True
    websocket.WS_FRAMES = wsproto_state.WSPROTO_FRAMES = h2_data.H2_DATA = True
    tcpwrite.TCP_SEND = _passes(tcpwrite.probe_tcp_send)
    webserver.CHUNK_WRITE = _passes(webserver.probe_chunk_write)
    webserver.WHOLE_RESPONSE = tcpwrite.TCP_SEND and _passes(webserver.probe_whole_response)
    agent.RAW_HEADERS = _passes(agent.probe_headers)
    agent.AGENT_PLAN = _passes(agent.probe_agent_plan)
    cjson.C_ENCODER = _passes(cjson.probe_c_encoder)
    websocket.WS_FRAMES = _passes(websocket.probe_ws_frames)
    wsproto_state.WSPROTO_FRAMES = _passes(wsproto_state.probe_wsproto_frames)
    h2_data.H2_DATA = _passes(h2_data.probe_h2_data)
    flags = {"tcp-send": tcpwrite.TCP_SEND, "chunk-write": webserver.CHUNK_WRITE,
             "whole-response": webserver.WHOLE_RESPONSE, "raw-headers": agent.RAW_HEADERS,
             "agent-plan": agent.AGENT_PLAN, "c-json-encoder": cjson.C_ENCODER,
             "websocket-frames": websocket.WS_FRAMES,
             "wsproto-frames": wsproto_state.WSPROTO_FRAMES, "h2-data": h2_data.H2_DATA}
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
