"""Following a VAPID key rotation made elsewhere: another node of a cluster (issue 13).

A rotation writes the new key into the store's metadata (``keys.store_new_key``), so
the node that rotated signs with it at once while the others still hold the old one.
Each daemon therefore reads that one value every ``interval`` seconds (one
``LoopingCall`` per node, one small read per tick) and, when it is not the key ring's
current key, hands over to ``follow`` (``PushRuntime.follow_rotation``), which reloads
the ring, the session capability and the transition timer. On one node alone (SQLite)
the read always matches and nothing happens. A tick never raises: a failed read is
logged once per outage and tried again at the next tick.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from jmappushd.store.interface import IMetadataStore
from jmappushd.transports.webpush.keys import META_KEY, KeyRing
from jmappushd.transports.webpush.vapid import VapidKey

__all__ = ["KEY_POLL_INTERVAL", "KeyWatcher", "stored_key_differs"]

KEY_POLL_INTERVAL = 2.0  # seconds: a rotation reaches every node within about this


async def stored_key_differs(store: IMetadataStore, keyring: KeyRing) -> bool:
    """Whether the store's current key is another than the ring's (a rotation elsewhere).

    The text is compared first (the usual answer, no key maths); a different spelling
    of the same key (written by hand) is parsed and is not a rotation. An unusable
    stored key raises ValueError, logged by the watcher."""
    text = await store.get_meta(META_KEY)
    if not text or text == keyring.current.to_private_string():
        return False
    return VapidKey.from_private_string(text).key_id != keyring.current.key_id


class KeyWatcher:
    """Calls ``follow`` every ``interval`` seconds while started; ``follow`` decides."""

    log = Logger()

    def __init__(self, clock: IReactorTime, follow: Callable[[], Awaitable[bool]],
                 interval: float = KEY_POLL_INTERVAL) -> None:
        self._follow = follow
        self._interval = interval
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._running: defer.Deferred[LoopingCall] | None = None
        self._failing = False

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self) -> None:
        """Begin polling (the first read one interval from now: start loaded the key)."""
        if not self._loop.running:
            self._running = self._loop.start(self._interval, now=False)

    def stop(self) -> defer.Deferred[None]:
        """Stop polling; fires once a tick under way has finished (it may touch the store)."""
        running, self._running = self._running, None
        if self._loop.running:
            self._loop.stop()
        done: defer.Deferred[None] = defer.succeed(None)
        if running is not None:
            done = running.addCallback(lambda _: None)
        return done

    def _tick(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._check())

    async def _check(self) -> None:
        try:
            await self._follow()
        except Exception:
            if not self._failing:
                self.log.failure("could not check the stored VAPID key (retrying every "
                                 "{interval} s)", interval=self._interval)
            self._failing = True
            return
        if self._failing:
            self.log.info("the stored VAPID key can be checked again")
        self._failing = False
