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
