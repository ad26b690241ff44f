"""``PushSubscription/get`` and ``PushSubscription/set`` (RFC 8620 §7.2.1, §7.2.2).

Subscriptions belong to the credentials that created them (PS-7, C-PS-7): both
methods see only ``principal.credential_id``'s subscriptions, and every other id is
``notFound``. ``url`` and ``keys`` never leave the server (PS-10) and the code sent
in the PushVerification never appears before the client writes it back (PS-21).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jmappushd.auth.authenticator import Principal
from jmappushd.config import Config
from jmappushd.core.hub import Hub
from jmappushd.jmap.registry import CallContext, MethodError
from jmappushd.jmap.standard import (
    check_allowed_args,
    get_id_list,
    none_if_empty,
    set_error,
    set_request_parts,
)
from jmappushd.store.interface import IStore
from jmappushd.store.records import PushQuotaExceeded, PushRateLimited, PushSubscription
from jmappushd.transports.webpush.delivery import DeliveryService
from jmappushd.transports.webpush.keys import KeyRing
from jmappushd.transports.webpush.limits import creation_rate
from jmappushd.transports.webpush.validate import (
    PROPERTIES,
    SetFailure,
    format_utc,
    validate_create,
    validate_update,
)

__all__ = ["PushSubscriptionMethods"]

_HIDDEN = frozenset({"url", "keys"})


def to_json(record: PushSubscription, properties: list[str] | None) -> dict[str, Any]:
    """A subscription as /get shows it: never url or keys (PS-10), the client's code (PS-21)."""
    full = {
        "id": record.id,
        "deviceClientId": record.device_client_id,
        "verificationCode": record.client_verification_code,
        "expires": format_utc(record.expires),
        "types": None if record.types is None else list(record.types),
    }
    if properties is None:
        return full
    return {name: full[name] for name in ("id", *properties) if name in full}


def _properties(args: dict[str, Any]) -> list[str] | None:
    value = args.get("properties")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MethodError("invalidArguments", "'properties' must be an array of strings or null.")
    if _HIDDEN.intersection(value):
        raise MethodError("forbidden", "url and keys are never returned (RFC 8620 §7.2.1).")
    unknown = [v for v in value if v not in PROPERTIES]
    if unknown:
        raise MethodError("invalidArguments", f"Unknown property {unknown[0]!r}.")
    return list(dict.fromkeys(value))


class PushSubscriptionMethods:
    """The two method handlers, sharing the store, the delivery service and the limits."""

    log = Logger()

    def __init__(self, config: Config, clock: IReactorTime, store: IStore, hub: Hub,
                 delivery: DeliveryService, keyring: KeyRing,
                 ready: Callable[[], Awaitable[None]]) -> None:
        self._config = config
        self._clock = clock
        self._store = store
        self._hub = hub
        self._delivery = delivery
        self._keyring = keyring
        self._rate = creation_rate(config.push)
        self._ready = ready

    def _now(self) -> float:
        return self._clock.seconds()

    async def _mine(self, principal: Principal) -> dict[str, PushSubscription]:
        await self._ready()
        found = await self._store.push_subscriptions_for(principal.credential_id)
        return {record.id: record for record in found}

    async def handle_get(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        """PS-9, PS-10, API-16: no accountId, no state; ids null → all of these credentials'."""
        check_allowed_args(args, ("ids", "properties"))
        ids = get_id_list(args, "ids", self._config.jmap.max_objects_in_get)
        properties = _properties(args)
        mine = await self._mine(ctx.principal)
        if ids is None:
            return {"list": [to_json(r, properties) for r in mine.values()], "notFound": []}
        return {
            "list": [to_json(mine[i], properties) for i in ids if i in mine],
            "notFound": [i for i in ids if i not in mine],
        }

    async def handle_set(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        """PS-11..PS-20, API-17: create, then update, then destroy; each on its own."""
        check_allowed_args(args, ("create", "update", "destroy"))
        parts = set_request_parts(args, self._config.jmap.max_objects_in_set)
        mine = await self._mine(ctx.principal)
        out: dict[str, dict[str, Any]] = {name: {} for name in (
            "created", "updated", "notCreated", "notUpdated", "notDestroyed")}
        for cid, obj in parts.create.items():
            try:
                record = await self._create(ctx.principal, obj)
            except SetFailure as failure:
                out["notCreated"][cid] = failure.error
                continue
            mine[record.id] = record
            ctx.created_ids[cid] = record.id
            out["created"][cid] = {"id": record.id, "expires": format_utc(record.expires),
                                   "keys": None, "types": None, "verificationCode": None}
            if "keys" in obj:
                del out["created"][cid]["keys"]
            if "types" in obj:
                del out["created"][cid]["types"]
        doomed = {ctx.resolve_id(key) for key in parts.destroy}
        for key, patch in parts.update.items():
            try:
                out["updated"][key] = await self._update(ctx.resolve_id(key), patch, mine, doomed)
            except SetFailure as failure:
                out["notUpdated"][key] = failure.error
        destroyed = []
        for key in parts.destroy:
            sub_id = ctx.resolve_id(key)
            if sub_id is None or sub_id not in mine or not await self._destroy(sub_id):
                out["notDestroyed"][key] = set_error("notFound")
            else:
                mine.pop(sub_id)
                destroyed.append(key)
        response = {name: none_if_empty(value) for name, value in out.items()}
        response["destroyed"] = none_if_empty(destroyed)
        return response

    async def _create(self, principal: Principal, obj: dict[str, Any]) -> PushSubscription:
        push = self._config.push
        request = validate_create(obj, self._now(), push)
        record = PushSubscription(
            id="S" + secrets.token_urlsafe(18),
            user_id=principal.user_id,
            credential_id=principal.credential_id,
            device_client_id=request.device_client_id,
            url=request.url,
            keys_p256dh=None if request.keys is None else request.keys[0],
            keys_auth=None if request.keys is None else request.keys[1],
            verification_code=secrets.token_urlsafe(24),  # 192 bits (SC-3)
            verified=False,
            client_verification_code=None,
            expires=request.expires,
            types=request.types,
            vapid_key_id=self._keyring.current.key_id,  # PS-24
            created=self._now(),
        )
        try:
            await self._store.create_push_subscription(record, push.push_max_total, self._rate)
        except PushRateLimited as exc:
            raise SetFailure("rateLimit", f"at most {exc.limit} push subscriptions may be "
                             "created per minute (push create-rate)") from None
        except PushQuotaExceeded as exc:
            raise SetFailure("overQuota", f"push-max-total: at most {exc.limit} push "
                             "subscriptions per user") from None
        if request.keys is None:
            self.log.warn("push subscription {sub_id} has no keys: its pushes are not "
                          "encrypted", sub_id=record.id)
        self._delivery.created(record)
        return record

    async def _update(self, sub_id: str | None, patch: dict[str, Any],
                      mine: dict[str, PushSubscription], doomed: set[str | None]
                      ) -> dict[str, Any] | None:
        record = mine.get(sub_id) if sub_id is not None else None
        if record is None or sub_id is None:
            raise SetFailure("notFound")
        if sub_id in doomed:
            raise SetFailure("willDestroy")
        result = validate_update(patch, record, self._now(), self._config.push)
        if result.verifies:
            result.changes["last_sent_seq"] = self._hub.last_seq  # nothing before this is owed
        if not await self._store.update_push_subscription(sub_id, result.changes):
            raise SetFailure("notFound")
        record = _apply(record, result.changes)
        mine[sub_id] = record
        await self._delivery.updated(record)
        return result.server_set or None

    async def _destroy(self, sub_id: str) -> bool:
        self._delivery.forget(sub_id)
        return bool(await self._store.delete_push_subscription(sub_id))


def _apply(record: PushSubscription, changes: dict[str, Any]) -> PushSubscription:
    delivery = record.delivery
    if "last_sent_seq" in changes:
        delivery = dataclasses.replace(delivery, last_sent_seq=changes["last_sent_seq"])
    fields = {k: v for k, v in changes.items() if k != "last_sent_seq"}
    return dataclasses.replace(record, delivery=delivery, **fields)
