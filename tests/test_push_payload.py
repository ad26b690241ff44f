"""Pure push helpers: bodies and splitting (SC-*, C-WP-3), response policy (C-WP-2), limits."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from jmappushd.transports.webpush import payload
from jmappushd.transports.webpush.policy import MAX_RETRY_AFTER, Outcome, classify, retry_after


def test_verification_body_has_exactly_three_members() -> None:
    """SC-3: a PushVerification has @type, pushSubscriptionId and verificationCode only."""
    assert json.loads(payload.verification("S1", "c0de")) == {
        "@type": "PushVerification", "pushSubscriptionId": "S1", "verificationCode": "c0de"}


def test_state_change_has_no_push_state() -> None:
    """SC-1, SC-4: a Web Push StateChange has only @type and changed."""
    body = payload.state_change({"A": {"Email": "s42"}})
    assert body == b'{"@type":"StateChange","changed":{"A":{"Email":"s42"}}}'


def test_topic_is_short_base64url_and_stable() -> None:
    """WP-4, C-WP-1: the topic is ≤32 base64url characters, the same for one subscription."""
    topic = payload.topic_for("S1")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", topic)
    assert topic == payload.topic_for("S1") != payload.topic_for("S2")


def test_small_change_is_one_part() -> None:
    """C-WP-3: a StateChange within the limit is sent whole."""
    parts, unfit = payload.split_state_change({"A": {"Email": "1"}, "B": {"Mailbox": "2"}})
    assert unfit == 0 and len(parts) == 1
    assert parts[0][1] == {"A": {"Email": "1"}, "B": {"Mailbox": "2"}}


def _reassemble(parts: list[payload.Part]) -> dict[str, dict[str, str]]:
    merged: dict[str, dict[str, str]] = {}
    for body, states in parts:
        decoded = json.loads(body)
        assert set(decoded) == {"@type", "changed"} and decoded["@type"] == "StateChange"
        assert decoded["changed"] == states
        for account, types in states.items():
            assert not set(types) & set(merged.get(account, {}))
            merged.setdefault(account, {}).update(types)
    return merged


def test_large_change_is_split_by_account_within_the_limit() -> None:
    """C-WP-3, ENC-7, WP-7: every part is a valid StateChange of at most 3993 octets and
    together they carry every state exactly once."""
    changed = {f"account{i:03d}": {"Email": "s" * 40, "Mailbox": "m" * 40} for i in range(100)}
    parts, unfit = payload.split_state_change(changed)
    assert unfit == 0 and len(parts) > 1
    assert all(len(body) <= payload.MAX_PAYLOAD for body, _ in parts)
    # By account: no account is cut when it fits a part on its own.
    assert sum(len(states) for _, states in parts) == 100
    assert _reassemble(parts) == changed


def test_account_too_large_alone_is_cut_by_type() -> None:
    """C-WP-3: an account whose own TypeState exceeds the limit is split by type."""
    big = {f"Type{i:03d}": "x" * 200 for i in range(40)}
    changed = {"small": {"Email": "1"}, "big": big}
    parts, unfit = payload.split_state_change(changed)
    assert unfit == 0
    assert all(len(body) <= payload.MAX_PAYLOAD for body, _ in parts)
    assert _reassemble(parts) == changed


def test_exact_limit_fits_and_unfit_states_are_counted() -> None:
    """ENC-7: a body of exactly the limit goes out whole; a state that fits nowhere is
    reported, not sent."""
    empty = len(payload.state_change({"A": {"T": ""}}))
    exact = {"A": {"T": "x" * (payload.MAX_PAYLOAD - empty)}}
    parts, unfit = payload.split_state_change(exact)
    assert len(parts[0][0]) == payload.MAX_PAYLOAD and unfit == 0
    parts, unfit = payload.split_state_change({"A": {"T": "x" * 5000, "U": "1"}})
    assert unfit == 1 and _reassemble(parts) == {"A": {"U": "1"}}


@pytest.mark.parametrize(("status", "outcome"), [
    (201, Outcome.DELIVERED), (202, Outcome.DELIVERED), (200, Outcome.DELIVERED),
    (404, Outcome.GONE), (410, Outcome.GONE), (429, Outcome.RATE_LIMITED),
    (400, Outcome.REJECTED), (401, Outcome.REJECTED), (403, Outcome.REJECTED),
    (413, Outcome.REJECTED), (301, Outcome.FAILED), (307, Outcome.FAILED),
    (500, Outcome.FAILED), (503, Outcome.FAILED), (418, Outcome.FAILED),
])
def test_classify(status: int, outcome: Outcome) -> None:
    """C-WP-2, WP-5, WP-6, WP-9: each status maps to its documented handling."""
    assert classify(status) is outcome


def test_retry_after_seconds_and_dates() -> None:
    """WP-8: Retry-After is delay-seconds or an HTTP date; junk is ignored, huge is capped."""
    now = 1_700_000_000.0
    assert retry_after(None, now) is None
    assert retry_after("30", now) == 30
    assert retry_after(" 5 ", now) == 5
    later = format_datetime(datetime.fromtimestamp(now + 90, UTC), usegmt=True)
    assert retry_after(later, now) == pytest.approx(90)
    earlier = format_datetime(datetime.fromtimestamp(now - 90, UTC), usegmt=True)
    assert retry_after(earlier, now) == 0
    assert retry_after("soon", now) is None
    assert retry_after("-5", now) is None
    assert retry_after("99999999999", now) == MAX_RETRY_AFTER


def test_request_headers_match_twisted_headers_and_refuse_control_characters() -> None:
    """WP-1..WP-4 on the wire: the fast header build gives exactly what twisted.web's own
    Headers would (canonical names, ASCII values), and a value with CR, LF or NUL, or
    one that is not ASCII, is refused rather than sent."""
    from twisted.web.http_headers import Headers

    from jmappushd.transports.webpush.sender import request_headers

    values = {"Content-Type": "application/json", "TTL": "86400", "Urgency": "normal",
              "Authorization": "vapid t=eyJ0eXAiOiJKV1QifQ.e30.c2ln, k=BAAA", "Topic": "abc_-1",
              "Content-Encoding": "aes128gcm"}
    for _ in range(2):  # the second time from the remembered encodings
        built = request_headers(values)
        expected = Headers({name: [value] for name, value in values.items()})
        assert list(built.getAllRawHeaders()) == list(expected.getAllRawHeaders())
    for bad in ("a\r\nX-Evil: 1", "a\nb", "a\0b", "caf\u00e9"):
        with pytest.raises(ValueError):
            request_headers({"Topic": bad})
