"""Validation of PushSubscription properties for /set create and update (PS-*, C-PS-*).

Each check raises :class:`SetFailure` carrying the SetError the RFC names:
``tooLarge`` for oversized values (C-PS-5), ``invalidProperties`` listing every bad
property (API-18), ``invalidPatch`` for a patch path this object cannot take, and
``forbidden`` for a URL refused by the SSRF policy (C-PS-3). Pure functions.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jmappushd.config import PushConfig
from jmappushd.jmap.standard import set_error
from jmappushd.store.records import PushSubscription
from jmappushd.transports.webpush.ece import InvalidKeys, parse_subscription_keys
from jmappushd.transports.webpush.ssrf import ForbiddenAddress, check_push_url

__all__ = ["PROPERTIES", "CreateRequest", "SetFailure", "format_utc", "parse_utc",
           "validate_create", "validate_update"]

PROPERTIES = ("id", "deviceClientId", "url", "keys", "verificationCode", "expires", "types")
MAX_URL = 2048  # octets (C-PS-5)
MAX_DEVICE_CLIENT_ID = 255
MAX_TYPES = 64
MAX_TYPE_NAME = 255
_UTC_DATE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z")


class SetFailure(Exception):
    """One create/update fails with ``error`` (a SetError object)."""

    def __init__(self, type: str, description: str | None = None,
                 properties: list[str] | None = None) -> None:
        super().__init__(type, description)
        self.error = set_error(type, description, properties)


def format_utc(timestamp: float) -> str:
    """A UTCDate without fractional seconds (API-19)."""
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(value: Any) -> float:
    """Parse a UTCDate; fractions of a second are dropped. ValueError if malformed."""
    match = _UTC_DATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("not a UTCDate")
    parsed = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return float(int(parsed.timestamp()))


def clamp_expires(value: Any, now: float, config: PushConfig) -> float:
    """C-PS-1, PS-5: null → now + cap; later than the cap → the cap; past → error."""
    cap = float(int(now) + config.expires_max)
    if value is None:
        return cap
    try:
        when = parse_utc(value)
    except ValueError:
        raise SetFailure("invalidProperties", "expires must be a UTCDate or null",
                         ["expires"]) from None
    if when <= now:
        raise SetFailure("invalidProperties", "expires is in the past", ["expires"])
    return min(when, cap)


def parse_types(value: Any) -> tuple[str, ...] | None:
    """``String[]|null``; unknown type names are fine (C-PS-6)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(t, str) and 0 < len(t) <= MAX_TYPE_NAME for t in value):
        raise SetFailure("invalidProperties", "types must be null or an array of type names",
                         ["types"])
    if len(value) > MAX_TYPES:
        raise SetFailure("tooLarge", f"types has more than {MAX_TYPES} entries", ["types"])
    return tuple(dict.fromkeys(value))


def parse_keys(value: Any, require: bool) -> tuple[str, str] | None:
    """``{p256dh, auth}`` or null, validated now (PS-2, C-PS-4, C-WP-4)."""
    if value is None:
        if require:
            raise SetFailure("invalidProperties", "this server requires keys", ["keys"])
        return None
    if not isinstance(value, dict) or set(value) != {"p256dh", "auth"} or not all(
            isinstance(v, str) for v in value.values()):
        raise SetFailure("invalidProperties", "keys must be {p256dh, auth} strings or null",
                         ["keys"])
    try:
        parse_subscription_keys(value["p256dh"], value["auth"])
    except InvalidKeys as exc:
        raise SetFailure("invalidProperties", f"keys: {exc}", ["keys"]) from None
    return value["p256dh"], value["auth"]


def check_url(value: Any, allow_private: bool) -> str:
    """PS-1, PS-18: an absolute https URL to a public host (C-PS-3, C-PS-5)."""
    if not isinstance(value, str):
        raise SetFailure("invalidProperties", "url must be a string", ["url"])
    if len(value.encode("utf-8", "surrogatepass")) > MAX_URL:
        raise SetFailure("tooLarge", f"url is longer than {MAX_URL} octets", ["url"])
    try:
        check_push_url(value, allow_private)
    except ForbiddenAddress as exc:
        raise SetFailure("forbidden", f"url refused: {exc}") from None
    except ValueError as exc:
        raise SetFailure("invalidProperties", f"url: {exc}", ["url"]) from None
    return value


def check_device_client_id(value: Any) -> str:
    if not isinstance(value, str):
        raise SetFailure("invalidProperties", "deviceClientId must be a string",
                         ["deviceClientId"])
    if len(value.encode("utf-8", "surrogatepass")) > MAX_DEVICE_CLIENT_ID:
        raise SetFailure("tooLarge", f"deviceClientId is longer than {MAX_DEVICE_CLIENT_ID} "
                         "octets", ["deviceClientId"])
    return value


@dataclass(frozen=True)
class CreateRequest:
    """A validated create: what to store; ``expires`` already clamped."""

    device_client_id: str
    url: str
    keys: tuple[str, str] | None
    expires: float
    types: tuple[str, ...] | None


def validate_create(obj: dict[str, Any], now: float, config: PushConfig) -> CreateRequest:
    """Check a create object; raises SetFailure (PS-1..PS-3, PS-12, PS-18, PS-20)."""
    bad = [name for name in obj if name not in PROPERTIES or name == "id"]
    if obj.get("verificationCode") is not None:
        bad.append("verificationCode")  # PS-3
    if "deviceClientId" not in obj:
        bad.append("deviceClientId")
    if "url" not in obj:
        bad.append("url")
    if bad:
        raise SetFailure("invalidProperties", "invalid or missing properties", sorted(set(bad)))
    device = check_device_client_id(obj["deviceClientId"])
    types = parse_types(obj.get("types"))
    keys = parse_keys(obj.get("keys"), config.require_keys)
    expires = clamp_expires(obj.get("expires"), now, config)
    url = check_url(obj["url"], config.allow_private_urls)
    return CreateRequest(device, url, keys, expires, types)


def _same_keys(value: Any, record: PushSubscription) -> bool:
    if record.keys_p256dh is None:
        return value is None
    return bool(value == {"p256dh": record.keys_p256dh, "auth": record.keys_auth})


def _immutable_unchanged(name: str, value: Any, record: PushSubscription) -> bool:
    """PS-12: an immutable property may appear in a patch only with its current value."""
    current = {"id": record.id, "deviceClientId": record.device_client_id, "url": record.url}
    if name == "keys":
        return _same_keys(value, record)
    return bool(value == current[name])


@dataclass
class UpdateResult:
    """Store column changes, and properties the server set differently than asked."""

    changes: dict[str, Any]
    server_set: dict[str, Any]
    verifies: bool = False


def validate_update(patch: dict[str, Any], record: PushSubscription, now: float,
                    config: PushConfig) -> UpdateResult:
    """Check a patch (PS-12, PS-15, PS-16); only verificationCode, expires, types change."""
    result = UpdateResult({}, {})
    bad: list[str] = []
    for path, value in patch.items():
        name, slash, _ = path.partition("/")
        if name not in PROPERTIES:
            bad.append(name)
        elif slash:
            if name in ("id", "deviceClientId", "url", "keys"):
                bad.append(name)
            else:
                raise SetFailure("invalidPatch", f"cannot patch inside {name!r}")
        elif name in ("id", "deviceClientId", "url", "keys"):
            if not _immutable_unchanged(name, value, record):
                bad.append(name)
        elif name == "verificationCode":
            if not _verification(value, record, result):
                bad.append(name)
        elif name == "expires":
            expires = clamp_expires(value, now, config)
            result.changes["expires"] = expires
            if value is None or parse_utc(value) != expires:
                result.server_set["expires"] = format_utc(expires)
        else:
            result.changes["types"] = parse_types(value)
    if bad:
        raise SetFailure("invalidProperties", "these properties cannot be set so",
                         sorted(set(bad)))
    return result


def _verification(value: Any, record: PushSubscription, result: UpdateResult) -> bool:
    """PS-15: the code must equal the one pushed; comparing in constant time."""
    if value is None:
        return record.client_verification_code is None
    if not isinstance(value, str) or not hmac.compare_digest(
            value.encode("utf-8", "surrogatepass"), record.verification_code.encode("utf-8")):
        return False
    if not record.verified:
        result.verifies = True
        result.changes["verified"] = True
    result.changes["client_verification_code"] = value
    return True
