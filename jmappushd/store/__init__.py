"""Durable storage: the IStore seam and its embedded SQLite default."""

from jmappushd.store import records
from jmappushd.store.interface import IStore, StateMap
from jmappushd.store.records import (
    Account,
    AccountInUse,
    NoSuchUser,
    PushDelivery,
    PushQuotaExceeded,
    PushSubscription,
    SchemaTooNew,
    StoreClosed,
    TokenRecord,
    User,
    UserExists,
)
from jmappushd.store.sqlite import SQLiteStore

__all__ = [
    "Account",
    "AccountInUse",
    "IStore",
    "NoSuchUser",
    "PushDelivery",
    "PushQuotaExceeded",
    "PushSubscription",
    "SQLiteStore",
    "SchemaTooNew",
    "StateMap",
    "StoreClosed",
    "TokenRecord",
    "User",
    "UserExists",
    "records",
]
