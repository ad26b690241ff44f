"""Plain values and errors that cross the store seam.

They are frozen so a record handed to several listeners (or cached by the auth
layer) cannot be changed behind the store's back.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class User:
    """A login. ``password_hash`` stays out of ``repr`` so logs never carry it."""

    id: str
    name: str
    password_hash: str = field(repr=False)
    primary_account_id: str
    created: float


@dataclass(frozen=True, slots=True)
class Account:
    """An account a user may read; ``name`` is the user name for a personal account."""

    id: str
    name: str
    is_personal: bool


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A bearer token as stored: its id and owner, never the token or its digest."""

    id: str
    user_id: str
    created: float
    label: str


class UserExists(Exception):
    """A user with this name already exists."""


class NoSuchUser(Exception):
    """No user has this name."""


class AccountInUse(Exception):
    """The account id is already some user's primary account."""


class StoreClosed(Exception):
    """The store was used before ``open()`` finished or after ``close()``."""


class SchemaTooNew(Exception):
    """The database was written by a newer jmappushd; refusing to touch it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this jmappushd knows "
            f"(up to {known}); upgrade jmappushd or use a matching database file"
        )
        self.found = found
        self.known = known


@dataclass(frozen=True, slots=True)
class PushDelivery:
    """A subscription's undelivered notification, kept durably (DESIGN: nothing lost).

    ``pending`` is the merged newest state per account and type not yet confirmed by
    the push service; ``attempts`` counts the POSTs started for it; ``next_attempt``
    is when it is due (None: nothing to send until the next change); ``failing_since``
    is when the current run of failures began; ``last_sent_seq`` is the change
    sequence number up to which every change is either delivered or in ``pending``;
    ``dropped`` counts the notifications given up in a row since the last success and
    ``backoff_until`` is when the next one may start (the back-off between them).
    """

    pending: dict[str, dict[str, str]] = field(default_factory=dict)
    attempts: int = 0
    next_attempt: float | None = None
    failing_since: float | None = None
    last_sent_seq: int = 0
    dropped: int = 0
    backoff_until: float | None = None


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """A stored PushSubscription (RFC 8620 §7.2) with its delivery bookkeeping.

    ``verification_code`` is the secret the server sent (PS-21: never shown through the
    API); ``client_verification_code`` is what the client last wrote. ``url`` and the
    keys stay out of ``repr`` so logs never carry them.
    """

    id: str
    user_id: str
    credential_id: str
    device_client_id: str
    url: str = field(repr=False)
    keys_p256dh: str | None = field(repr=False)
    keys_auth: str | None = field(repr=False)
    verification_code: str = field(repr=False)
    verified: bool
    client_verification_code: str | None
    expires: float
    types: tuple[str, ...] | None
    vapid_key_id: str
    created: float
    delivery: PushDelivery = field(default_factory=PushDelivery)


class PushQuotaExceeded(Exception):
    """The user already has the maximum number of push subscriptions (PS-19)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} push subscriptions per user")
        self.limit = limit


class StoreError(Exception):
    """The configured store cannot be prepared; the message is one line naming it."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now (down, refusing, connection lost); retrying later
    may succeed. The message is one line naming the server, never a password."""


@dataclass(frozen=True, slots=True)
class CreationRate:
    """At most ``limit`` push subscription creations per user in any ``window`` seconds."""

    limit: int
    window: float = 60.0


class PushRateLimited(Exception):
    """The user created ``limit`` push subscriptions within the last ``window`` seconds."""

    def __init__(self, rate: CreationRate) -> None:
        super().__init__(f"at most {rate.limit} push subscriptions per {rate.window:g} s")
        self.limit = rate.limit
        self.window = rate.window
