"""The daemon's VAPID key: created on first start, persisted in the store (VAPID-11, PS-24).

The private scalar lives in the store's metadata under :data:`META_KEY`. The
:class:`KeyRing` holds the current key and one :class:`VapidSigner` per key id, so a
subscription is always signed with the key it was created under (VAPID-12).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jmappushd.store.interface import IStore
from jmappushd.transports.webpush.vapid import VapidKey, VapidSigner

__all__ = ["META_KEY", "META_PREVIOUS_KEY", "META_PREVIOUS_UNTIL", "VAPID_CAPABILITY", "KeyRing",
           "forget_previous_key", "load_or_create_key", "load_previous_key", "store_new_key"]

META_KEY = "vapid.private_key"
# During a rotation's transition period: the previous key and when its subscriptions end.
META_PREVIOUS_KEY = "vapid.previous_key"
META_PREVIOUS_UNTIL = "vapid.previous_until"
VAPID_CAPABILITY = "urn:ietf:params:jmap:webpush-vapid"

log = Logger()


async def load_or_create_key(store: IStore) -> VapidKey:
    """Load the persisted key, or create and persist one on first start.

    Created with ``add_meta``: of several daemons starting at once on a new store, one
    key wins and all of them use it (with a plain write each would sign with its own
    until the key watcher noticed, and destroy what it had created meanwhile)."""
    text = await store.get_meta(META_KEY)
    if text:
        return VapidKey.from_private_string(text)
    made = VapidKey.generate().to_private_string()
    stored = await store.add_meta(META_KEY, made)
    key = VapidKey.from_private_string(stored)
    if stored == made:
        log.info("created VAPID key {key_id}", key_id=key.key_id)
    return key


async def store_new_key(store: IStore, previous: VapidKey | None = None,
                        until: float = 0.0) -> VapidKey:
    """Replace the persisted key with a fresh one (rotation, SES-16).

    With ``previous`` and ``until``, the old key is kept for its subscriptions until
    then (C-V-2); otherwise any kept previous key is forgotten.
    """
    key = VapidKey.generate()
    if previous is not None and until > 0:
        await store.set_meta(META_PREVIOUS_KEY, previous.to_private_string())
        await store.set_meta(META_PREVIOUS_UNTIL, repr(until))
    else:
        await forget_previous_key(store)
    await store.set_meta(META_KEY, key.to_private_string())
    log.info("rotated the VAPID key to {key_id}", key_id=key.key_id)
    return key


async def load_previous_key(store: IStore) -> tuple[VapidKey, float] | None:
    """The key of a rotation still in its transition period, with the period's end."""
    text = await store.get_meta(META_PREVIOUS_KEY)
    until = await store.get_meta(META_PREVIOUS_UNTIL)
    if not text or not until:
        return None
    return VapidKey.from_private_string(text), float(until)


async def forget_previous_key(store: IStore) -> None:
    """End a transition: the old key is erased (set to empty) from the store."""
    await store.set_meta(META_PREVIOUS_KEY, "")
    await store.set_meta(META_PREVIOUS_UNTIL, "")


class KeyRing:
    """The current VAPID key and a token-caching signer per key id."""

    def __init__(self, clock: IReactorTime, subject: str = "") -> None:
        self._clock = clock
        self._subject = subject
        self._signers: dict[str, VapidSigner] = {}
        self._current: VapidKey | None = None

    @property
    def current(self) -> VapidKey:
        if self._current is None:
            raise RuntimeError("the VAPID key is not loaded yet")
        return self._current

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def set_current(self, key: VapidKey, keep_old: bool = False) -> None:
        """Make ``key`` current; old signers are forgotten unless ``keep_old``."""
        if not keep_old:
            self._signers.clear()
        self._current = key
        self._signers[key.key_id] = VapidSigner(key, self._clock, self._subject)

    def keep(self, key: VapidKey) -> None:
        """Keep signing with an old ``key`` (a rotation's transition period)."""
        self._signers.setdefault(key.key_id, VapidSigner(key, self._clock, self._subject))

    def drop(self, key_id: str) -> None:
        """Stop signing with an old key; the current key cannot be dropped."""
        if self._current is None or key_id != self._current.key_id:
            self._signers.pop(key_id, None)

    @property
    def key_ids(self) -> frozenset[str]:
        """Every key id still signed for (current and kept)."""
        return frozenset(self._signers)

    def signer(self, key_id: str) -> VapidSigner | None:
        """The signer for ``key_id``; None if that key is no longer held (subscription stale)."""
        return self._signers.get(key_id)

    def capability(self) -> dict[str, str]:
        """The session value of ``urn:ietf:params:jmap:webpush-vapid`` (SES-15)."""
        return {"applicationServerKey": self.current.public_key_b64}
