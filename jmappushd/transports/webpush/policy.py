"""What a push service's answer means for the subscription (C-WP-2, WP-5..WP-9).

Pure decisions, no I/O: :func:`classify` maps a status code to an :class:`Outcome`,
:func:`retry_after` reads ``Retry-After`` (seconds or an HTTP date, RFC 9110 §10.2.3),
:func:`backoff_delay` spaces the notifications of a subscription that keeps failing.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from email.utils import parsedate_to_datetime

__all__ = ["DEFAULT_RATE_LIMIT_DELAY", "MAX_RETRY_AFTER", "Outcome", "backoff_delay", "classify",
           "retry_after"]

DEFAULT_RATE_LIMIT_DELAY = 60.0  # C-WP-2: 429 without Retry-After
MAX_RETRY_AFTER = 24 * 3600.0  # a service cannot park us longer than the give-up period


class Outcome(enum.Enum):
    """The fate of one POST; the value is the metrics label."""

    DELIVERED = "delivered"  # 2xx (201/202 in RFC 8030)
    GONE = "gone"  # 404/410: the subscription is dead, destroy it (WP-6)
    REJECTED = "rejected"  # 400/401/403/413: drop the message, never retry (WP-9)
    RATE_LIMITED = "rate_limited"  # 429: wait Retry-After, then send merged (PS-22)
    FAILED = "failed"  # 5xx, 3xx (redirects are not followed), timeouts, network errors


_REJECTED = frozenset({400, 401, 403, 413})


def classify(status: int) -> Outcome:
    """Map an HTTP status code to what the delivery service does next."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (404, 410):
        return Outcome.GONE
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in _REJECTED:
        return Outcome.REJECTED
    return Outcome.FAILED  # 3xx (SSRF: never followed), other 4xx, 5xx


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None if absent or malformed.

    Accepts delay-seconds or an HTTP date; a date in the past gives 0. The result is
    capped at :data:`MAX_RETRY_AFTER`.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        return None
    delay = when.timestamp() - now
    if math.isnan(delay):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def backoff_delay(dropped: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Seconds before the next notification after ``dropped`` consecutive dropped ones.

    ``base`` doubles with each dropped notification, is capped at ``cap``, then scaled by
    a random factor in [0.5, 1.0] ("equal jitter"): subscriptions of one failing push
    service that failed together do not all come back together, and the wait never
    falls below half of the nominal one. ``rand`` returns a float in [0, 1).
    """
    if dropped <= 0 or base <= 0 or cap <= 0:
        return 0.0
    nominal = min(cap, base * 2.0 ** min(dropped - 1, 64))
    return nominal * (0.5 + 0.5 * rand())
