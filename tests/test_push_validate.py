"""Pure validation of PushSubscription create and update objects (PS-*, C-PS-*)."""

from __future__ import annotations

import dataclasses

import pytest

from jmappushd.config import PushConfig
from jmappushd.store.records import PushSubscription
from jmappushd.transports.webpush.validate import (
    SetFailure,
    format_utc,
    parse_utc,
    validate_create,
    validate_update,
)
from tests.push_fakes import Receiver

NOW = 1_700_000_000.0
CONFIG = PushConfig(allow_private_urls=False)
RECORD = PushSubscription(
    id="S1", user_id="u", credential_id="token:T", device_client_id="d",
    url="https://push.example/x", keys_p256dh=None, keys_auth=None, verification_code="c0de",
    verified=False, client_verification_code=None, expires=NOW + 100, types=None,
    vapid_key_id="k", created=NOW)


def failure(call: object) -> dict[str, object]:
    assert isinstance(call, SetFailure)
    return call.error


def test_utc_dates() -> None:
    """API-19: UTCDate with uppercase Z; fractional seconds accepted and dropped on input,
    omitted on output; other forms refused."""
    assert parse_utc("2023-11-14T22:13:20Z") == NOW
    assert parse_utc("2023-11-14T22:13:20.999Z") == NOW
    assert format_utc(NOW + 0.7) == "2023-11-14T22:13:20Z"
    for bad in ("2023-11-14T22:13:20", "2023-11-14 22:13:20Z", "2023-11-14T22:13:20+00:00",
                "2023-11-14t22:13:20z", 1700000000, None):
        with pytest.raises(ValueError):
            parse_utc(bad)


def test_create_defaults_and_public_url() -> None:
    """C-PS-1, C-PS-3: expires defaults to now + cap; a public https name passes at create."""
    request = validate_create({"deviceClientId": "d", "url": "https://push.example/a"},
                              NOW, CONFIG)
    assert request.expires == NOW + CONFIG.expires_max and request.keys is None


def test_require_keys() -> None:
    """C-WP-4: with require-keys on, a create without keys is invalidProperties ["keys"]."""
    strict = dataclasses.replace(CONFIG, require_keys=True)
    with pytest.raises(SetFailure) as info:
        validate_create({"deviceClientId": "d", "url": "https://push.example/a"}, NOW, strict)
    assert failure(info.value)["properties"] == ["keys"]
    keys = {"p256dh": Receiver().p256dh, "auth": Receiver().auth_b64}
    ok = validate_create({"deviceClientId": "d", "url": "https://push.example/a",
                          "keys": keys}, NOW, strict)
    assert ok.keys == (keys["p256dh"], keys["auth"])


def test_forbidden_ip_literal() -> None:
    """PS-18, C-PS-3: a private IP literal is refused with forbidden, no properties."""
    with pytest.raises(SetFailure) as info:
        validate_create({"deviceClientId": "d", "url": "https://10.0.0.1/a"}, NOW, CONFIG)
    error = failure(info.value)
    assert error["type"] == "forbidden" and "properties" not in error


def test_update_expires_null_resets_to_cap_and_reports_it() -> None:
    """PS-16: expires null means the server's choice, reported in updated."""
    result = validate_update({"expires": None}, RECORD, NOW, CONFIG)
    assert result.changes == {"expires": NOW + CONFIG.expires_max}
    assert result.server_set == {"expires": format_utc(NOW + CONFIG.expires_max)}


def test_update_verification_code_rules() -> None:
    """PS-15, PS-21: the right code verifies; null only while nothing was written; a verified
    subscription accepts its code again without re-verifying."""
    result = validate_update({"verificationCode": "c0de"}, RECORD, NOW, CONFIG)
    assert result.verifies
    assert result.changes == {"verified": True, "client_verification_code": "c0de"}
    assert validate_update({"verificationCode": None}, RECORD, NOW, CONFIG).changes == {}
    verified = dataclasses.replace(RECORD, verified=True, client_verification_code="c0de")
    with pytest.raises(SetFailure):
        validate_update({"verificationCode": None}, verified, NOW, CONFIG)
    again = validate_update({"verificationCode": "c0de"}, verified, NOW, CONFIG)
    assert not again.verifies and again.changes == {"client_verification_code": "c0de"}
    for wrong in ("c0dE", 5, ""):
        with pytest.raises(SetFailure) as info:
            validate_update({"verificationCode": wrong}, RECORD, NOW, CONFIG)
        assert failure(info.value)["properties"] == ["verificationCode"]


def test_update_keys_only_with_current_value() -> None:
    """PS-12: keys may be sent in a patch only unchanged."""
    keys = {"p256dh": "P", "auth": "A"}
    record = dataclasses.replace(RECORD, keys_p256dh="P", keys_auth="A")
    assert validate_update({"keys": keys}, record, NOW, CONFIG).changes == {}
    with pytest.raises(SetFailure):
        validate_update({"keys": {"p256dh": "P", "auth": "B"}}, record, NOW, CONFIG)
    assert validate_update({"keys": None}, RECORD, NOW, CONFIG).changes == {}
