"""One connection's StateChange subscription (RFC 8887 §4.3.5).

Created by WebSocketPushEnable and dropped by WebSocketPushDisable, a newer
enable (C-WS-6) or the end of the connection. The listener machine is the shared
:class:`~jmappushd.core.feed.Feed` (subscribe first, hold live changes during a
catch-up, merge, leading-edge throttle, encode once per view); this adds only
what the WebSocket does differently: held changes fold into the catch-up
StateChange (one message, newest wins), an unknown ``pushState`` with nothing
changed still gets one StateChange with ``changed: {}`` and a fresh pushState
(C-WS-8), and a failed catch-up is logged and what was held is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from jmappushd.core.feed import Feed, FeedContext
from jmappushd.core.views import Types, ViewCache
from jmappushd.transports.websocket.frames import state_change_frame


def push_views() -> ViewCache:
    """The WebSocket transport's per-view cache: StateChange text frames."""
    return ViewCache(state_change_frame)


class PushSession(Feed):
    """Filter, throttle and write StateChanges for one connection."""

    __slots__ = ("_send",)
    log = Logger()
    MERGE_CATCH_UP = True
    RESYNC_EMPTY = True

    def __init__(self, ctx: FeedContext, send: Callable[[bytes], None],
                 account_ids: frozenset[str], types: Types, *, user_id: str) -> None:
        super().__init__(ctx, account_ids, types, user_id=user_id)
        self._send = send

    def start(self, push_state: str | None) -> None:
        """Subscribe, then (with a token) catch up; subscribing first loses nothing (WS-19)."""
        self.listen()
        if push_state is not None:
            self.catch_up(push_state)

    def deliver(self, data: bytes) -> None:
        self._send(data)

    def catch_up_failed(self, failure: Failure) -> None:
        self.log.failure("WebSocket push catch-up failed", failure)
        super().catch_up_failed(failure)
