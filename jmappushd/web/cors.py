"""CORS for the EventSource endpoint (``[event-source] cors-origins``).

A web client on another origin needs the stream's response to name its origin.
Origins listed explicitly are echoed with ``Access-Control-Allow-Credentials:
true`` (cookies or browser-held HTTP auth may be in play); a configured ``*``
lets any other origin read the stream, but without credentials, as the Fetch
standard requires. The preflight a script's ``Authorization`` header triggers is
answered without authentication (browsers never send credentials on it).
Nothing is added when no origins are configured.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.server import Request

#: Request headers a cross-origin client may send: credentials, the resumption
#: header, and what EventSource polyfills add.
ALLOWED_HEADERS = b"Authorization, Last-Event-ID, Cache-Control, Accept, X-Requested-With"
ALLOWED_METHODS = b"GET"
PREFLIGHT_MAX_AGE = b"600"


class CorsPolicy:
    """Decides and writes the CORS response headers for one configured origin list."""

    def __init__(self, origins: Iterable[str]) -> None:
        listed = tuple(origins)
        self.any_origin = "*" in listed
        self._explicit = frozenset(o.encode("ascii") for o in listed if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self._explicit)

    def apply(self, request: Request) -> bool:
        """Add the headers for an actual request; True when the origin is allowed."""
        if not self.enabled:
            return False
        request.setHeader(b"Vary", b"Origin")
        origin = request.getHeader(b"Origin")
        if origin is None:
            return False
        normalised = _normalise(origin)
        if normalised in self._explicit:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
            return True
        if self.any_origin:
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            return True
        return False

    def preflight(self, request: Request) -> None:
        """Answer ``OPTIONS`` (204); CORS approval only for an allowed origin and GET."""
        request.setResponseCode(204)
        request.setHeader(b"Allow", b"GET, OPTIONS")
        if not self.apply(request):
            return
        method = request.getHeader(b"Access-Control-Request-Method")
        if method is not None and method.strip().upper() != ALLOWED_METHODS:
            for name in (b"Access-Control-Allow-Origin", b"Access-Control-Allow-Credentials"):
                request.responseHeaders.removeHeader(name)
            return
        request.setHeader(b"Access-Control-Allow-Methods", ALLOWED_METHODS)
        request.setHeader(b"Access-Control-Allow-Headers", ALLOWED_HEADERS)
        request.setHeader(b"Access-Control-Max-Age", PREFLIGHT_MAX_AGE)


def _normalise(origin: bytes) -> bytes:
    """Origins compare by scheme and host case-insensitively, as the config stores them."""
    return origin.strip().lower().rstrip(b"/")
