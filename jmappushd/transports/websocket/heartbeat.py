"""The WebSocket heartbeat as one pure step, shared by the HTTP/1.1 and HTTP/2 sessions.

One timer per connection: at each tick the session asks :func:`heartbeat_step` whether
the client has been silent past ``client_timeout`` (close it), whether a ping is due
(send one), and how long to sleep until the next thing that can be due.
"""

from __future__ import annotations

from typing import NamedTuple


class Beat(NamedTuple):
    timed_out: bool  # nothing from the client for client_timeout: close the connection
    ping: bool  # send a ping now
    next_ping: float  # when the following ping is due
    delay: float  # seconds until the next tick


def heartbeat_step(now: float, last_rx: float, next_ping: float, client_timeout: float,
                   heartbeat: float) -> Beat:
    deadline = last_rx + client_timeout
    if now >= deadline:
        return Beat(True, False, next_ping, 0.0)
    ping = now >= next_ping
    if ping:
        next_ping = now + heartbeat
    return Beat(False, ping, next_ping, min(next_ping, deadline) - now)
