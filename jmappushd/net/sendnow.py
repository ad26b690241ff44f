"""Send one complete message on a TCP transport now, not on the next reactor turn.

``transport.write`` only queues: the reactor adds the socket to its write set,
waits for the next poll, sends, and takes the socket out again (two
``epoll_ctl`` calls and a trip through the reactor per write). For a push event,
one small complete message to each of thousands of idle connections, that costs
more than the ``send()`` itself. :func:`send_now` calls ``send()`` at once when
nothing is queued on the transport; whatever the kernel does not take, and any
error, goes through ``transport.write``, so ordering, back-pressure (producer
pausing) and connection loss stay exactly Twisted's.

Only for whole messages: two eager sends of the parts of one message would be
two TCP segments where the reactor would have joined them into one.
"""

from __future__ import annotations

from typing import Any

from jmappushd.net._fastpath import tcp_idle_socket


def send_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending it before returning when possible."""
    sock = tcp_idle_socket(transport)
    if sock is not None:
        try:
            sent = sock.send(data)
        except OSError:
            # EAGAIN, or a dead peer: the queued write below meets the same
            # condition and Twisted handles it (waits, or loses the connection).
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
