"""CORS for every JMAP endpoint (``[server] cors-origins``).

A web client on another origin can discover the session, call the API, create a
PushSubscription and read the event stream only if each response names its
origin, and its ``Authorization`` header makes the browser ask first with a
preflight ``OPTIONS`` (which carries no credentials, so it is answered without
authentication). :class:`CorsGate` sits above the JMAP tree, so every response
below it — 200s, 401s, problem responses, 404s — carries the same headers and
every path answers the preflight.

Credentials are never allowed (no ``Access-Control-Allow-Credentials``): JMAP
clients send an ``Authorization`` header they set themselves, which only needs to
be listed in ``Access-Control-Allow-Headers``; credentials in the Fetch sense are
cookies and HTTP auth the browser holds, which the daemon does not rely on and
which a listed page must not be able to use on the user's behalf. That also lets
a configured ``*`` answer as ``*``. The WebSocket handshake is not behind the gate:
it has its own Origin check (``[websocket] allowed-origins``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

#: Request headers a cross-origin client may send: its credentials, the JSON body's
#: type, the EventSource resumption header and what EventSource polyfills add.
ALLOWED_HEADERS = (b"Authorization, Content-Type, Last-Event-ID, Cache-Control, Accept, "
                   b"X-Requested-With")
#: Response headers a page may read beyond the CORS-safelisted ones: the challenge of a
#: 401, the wait of a 429 or 503, the methods of a 405.
EXPOSED_HEADERS = b"WWW-Authenticate, Retry-After, Allow"
PREFLIGHT_MAX_AGE = b"600"  # s; browsers cap it (Chromium at 7200)
DEFAULT_METHODS: tuple[bytes, ...] = (b"GET",)


def methods_of(resource: object) -> tuple[bytes, ...]:
    """The methods a resource serves cross-origin: its ``cors_methods``, else GET."""
    methods = getattr(resource, "cors_methods", DEFAULT_METHODS)
    return tuple(bytes(m) for m in methods)


class CorsPolicy:
    """Decides and writes the CORS response headers for one configured origin list."""

    def __init__(self, origins: Iterable[str]) -> None:
        listed = tuple(origins)
        self.any_origin = "*" in listed
        self._explicit = frozenset(o.encode("ascii") for o in listed if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self._explicit)

    def allowed_origin(self, origin: bytes | None) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None."""
        if origin is None or not self.enabled:
            return None
        if _normalise(origin) in self._explicit:
            return origin.strip()
        return b"*" if self.any_origin else None

    def apply(self, request: Request) -> bool:
        """Add the headers of an actual request; True when the origin is allowed."""
        if not self.enabled:
            return False
        # The answer depends on Origin whatever it is, so caches must key on it.
        _add_vary(request, b"Origin")
        allow = self.allowed_origin(request.getHeader(b"Origin"))
        if allow is None:
            return False
        request.setHeader(b"Access-Control-Allow-Origin", allow)
        request.setHeader(b"Access-Control-Expose-Headers", EXPOSED_HEADERS)
        return True

    def preflight(self, request: Request, methods: Collection[bytes] = DEFAULT_METHODS
                  ) -> None:
        """Answer ``OPTIONS`` with 204; the CORS approval only for an allowed origin.

        The methods offered are the endpoint's own; the browser compares them (and the
        headers) with what the page asked for and refuses the request itself otherwise.
        """
        offered = b", ".join(methods)
        request.setResponseCode(204)
        request.setHeader(b"Allow", offered + b", OPTIONS")
        if not self.apply(request):
            return
        request.responseHeaders.removeHeader(b"Access-Control-Expose-Headers")
        request.setHeader(b"Access-Control-Allow-Methods", offered)
        request.setHeader(b"Access-Control-Allow-Headers", ALLOWED_HEADERS)
        request.setHeader(b"Access-Control-Max-Age", PREFLIGHT_MAX_AGE)


class Preflight(Resource):
    """The answer to ``OPTIONS`` on a gated path, whatever resource the path names."""

    isLeaf = True

    def __init__(self, policy: CorsPolicy, methods: tuple[bytes, ...]) -> None:
        super().__init__()
        self._policy = policy
        self._methods = methods

    def render(self, request: Request) -> bytes:
        self._policy.preflight(request, self._methods)
        return b""


class CorsGate(Resource):
    """Puts a resource tree behind one :class:`CorsPolicy`.

    Traversal passes through :meth:`getChildWithDefault`, so the headers are on the
    request before any child renders (or fails); ``OPTIONS`` is answered here, with
    the methods of the child it names, before the child could ask for credentials.
    Children named in ``exempt`` (the WebSocket handshake) pass through untouched.
    """

    def __init__(self, policy: CorsPolicy, inner: IResource,
                 exempt: Collection[bytes] = ()) -> None:
        super().__init__()
        self._policy = policy
        self._inner = inner
        self._exempt = frozenset(exempt)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        child: IResource = self._inner.getChildWithDefault(path, request)
        if path in self._exempt:
            return child
        return self._gated(child, request)

    def render(self, request: Request) -> object:
        return self._gated(self._inner, request).render(request)

    def _gated(self, resource: IResource, request: Request) -> IResource:
        if request.method == b"OPTIONS":
            return Preflight(self._policy, methods_of(resource))
        self._policy.apply(request)
        return resource


def _add_vary(request: Request, name: bytes) -> None:
    present = request.responseHeaders.getRawHeaders(b"Vary") or []
    names = {v.strip().lower() for value in present for v in value.split(b",")}
    if name.lower() not in names:
        request.responseHeaders.addRawHeader(b"Vary", name)


def _normalise(origin: bytes) -> bytes:
    """Origins compare by scheme and host case-insensitively, as the config stores them."""
    return origin.strip().lower().rstrip(b"/")
