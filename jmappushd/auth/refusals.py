"""Logins refused before the password was judged: the client should retry later.

These are not ``UnauthorizedLogin`` (the credentials may well be right), so the HTTP side
answers them with their own status and ``Retry-After`` instead of a 401 challenge.
"""

from __future__ import annotations


class LoginRefused(Exception):
    """A login the daemon would not check now; ``retry_after`` is in whole seconds."""

    status = 503
    reason = "refused"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = max(1, retry_after)


class KDFBusy(LoginRefused):
    """Every KDF slot is busy and the queue is full."""

    status = 503
    reason = "busy"


class LoginThrottled(LoginRefused):
    """Too many failed logins from this client address."""

    status = 429
    reason = "throttled"
