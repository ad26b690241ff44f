"""Request-level JMAP errors (RFC 8620 §3.6.1) as RFC 7807 problem details.

A request rejected as a whole never reaches the method processor; every transport
renders the same :class:`RequestProblem` (HTTP as ``application/problem+json``, the
WebSocket as a ``RequestError`` frame), so the error vocabulary lives here once.
"""

from __future__ import annotations

from typing import Any

JMAP_ERROR_PREFIX = "urn:ietf:params:jmap:error:"
PROBLEM_CONTENT_TYPE = b"application/problem+json"

# Human-readable titles per kind; RFC 7807 wants a summary that does not change
# from occurrence to occurrence, the occurrence-specific text goes in ``detail``.
_TITLES: dict[str, str] = {
    "notJSON": "The request is not valid I-JSON",
    "notRequest": "The request is not a valid JMAP Request object",
    "unknownCapability": "The request uses an unsupported capability",
    "limit": "The request exceeds a server limit",
}


QUOTED_MAX = 60
"""Characters of client text an error message may quote: enough to recognise it, never
a way to make an error (or the log line naming it) as large as the request."""


def quoted(text: str) -> str:
    """``text`` as ``repr`` shows it, clipped to :data:`QUOTED_MAX` characters."""
    shown = repr(text[: QUOTED_MAX + 1])
    return shown if len(text) <= QUOTED_MAX else shown[: QUOTED_MAX] + "…"


class RequestProblem(Exception):
    """A request-level error (RFC 8620 §3.6.1) rendered as RFC 7807 problem details.

    ``kind`` is the last part of the JMAP error URN (``notJSON``, ``notRequest``,
    ``unknownCapability``, ``limit``); ``limit`` names the exceeded limit and is
    required by the RFC when ``kind`` is ``"limit"`` (API-8). The status defaults to
    400 for every kind (C-API-2).
    """

    def __init__(self, kind: str, detail: str, status: int = 400, limit: str | None = None) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.limit = limit

    @property
    def type(self) -> str:
        """The full problem type URI, e.g. ``urn:ietf:params:jmap:error:notJSON``."""
        return JMAP_ERROR_PREFIX + self.kind

    @property
    def title(self) -> str:
        """A short fixed summary of the problem type."""
        return _TITLES.get(self.kind, "The request was rejected")

    def to_json(self) -> dict[str, Any]:
        """The problem-details object; ``status`` repeats the HTTP status (RFC 7807 §3.1)."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.limit is not None:
            body["limit"] = self.limit
        return body

    def __repr__(self) -> str:
        return f"RequestProblem({self.kind!r}, {self.detail!r}, status={self.status})"
