"""Durable storage: the store interfaces, the embedded SQLite default and a memory store.

Backends are chosen by ``[storage] backend`` through :mod:`jmappushd.store.backends`.
"""

from jmappushd.store import records
from jmappushd.store.interface import (
    IMetadataStore,
    IPrincipalStore,
    IPushStore,
    IStateLog,
    IStore,
    IStoreLifecycle,
    StateMap,
)
from jmappushd.store.memory import MemoryStore
from jmappushd.store.records import (
    Account,
    AccountInUse,
    CreationRate,
    NoSuchUser,
    PushDelivery,
    PushQuotaExceeded,
    PushRateLimited,
    PushSubscription,
    SchemaTooNew,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    TokenRecord,
    User,
    UserExists,
)
from jmappushd.store.sqlite import SQLiteStore

__all__ = [
    "Account",
    "AccountInUse",
    "CreationRate",
    "IMetadataStore",
    "IPrincipalStore",
    "IPushStore",
    "IStateLog",
    "IStore",
    "IStoreLifecycle",
    "MemoryStore",
    "NoSuchUser",
    "PushDelivery",
    "PushQuotaExceeded",
    "PushRateLimited",
    "PushSubscription",
    "SQLiteStore",
    "SchemaTooNew",
    "StateMap",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "TokenRecord",
    "User",
    "UserExists",
    "records",
]
