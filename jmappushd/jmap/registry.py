"""The method registry shared by every JMAP transport (RFC 8620 §3).

Transports only frame and authenticate; what a method name means is decided here.
Each method belongs to a capability, and a call is only honoured when the request opted
into that capability (RFC 8620 §1.8, API-6). The registry stays open: a gateway mode can
install a fallback that receives every call no local method claims.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

CORE_CAPABILITY = "urn:ietf:params:jmap:core"

Handler = Callable[["CallContext", dict[str, Any]], Awaitable[Any] | Any]
"""A method implementation: ``(ctx, arguments)`` → a response-arguments dict (one
response named like the method) or a list of ``(name, arguments)`` tuples; may be
``async``. Failures are signalled by raising :class:`MethodError`. The arguments are
read-only: values resolved from result references are an earlier response's own
objects (``jmap.resultref``), and the returned values must be JSON types."""

Fallback = Callable[["CallContext", str, dict[str, Any]], Awaitable[Any] | Any]
"""Receives ``(ctx, method_name, arguments)`` for calls with no registered method."""


class MethodError(Exception):
    """A method-level error (RFC 8620 §3.6.2, API-9/API-10).

    Raised by a handler, it becomes ``["error", {...}, callId]`` at that point in
    ``methodResponses``; the request itself still succeeds. ``extra`` members (e.g.
    ``properties``) are copied into the error object.
    """

    def __init__(self, type: str, description: str | None = None, **extra: Any) -> None:
        super().__init__(type, description)
        self.type = type
        self.description = description
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        """The error arguments object: ``type``, optional ``description``, then extras."""
        body: dict[str, Any] = {"type": self.type}
        if self.description is not None:
            body["description"] = self.description
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        return f"MethodError({self.type!r}, {self.description!r})"


@dataclass(slots=True)
class CallContext:
    """Per-Request state handed to every handler of that request.

    ``principal`` is whatever the transport authenticated (opaque here).
    ``created_ids`` maps creation id → server id for the whole request (API-13); a
    /set handler adds every record it creates, so later calls can resolve ``#cid``.
    Handlers may replace ``session_state`` if they change the Session (SES-11); the
    Response carries the value as it is after the last call.
    """

    principal: Any
    session_state: str
    created_ids: dict[str, str] = field(default_factory=dict)
    using: frozenset[str] = frozenset()

    def resolve_id(self, value: str) -> str | None:
        """Map ``#creationId`` to the server id created earlier in this request.

        A plain id is returned unchanged; an unknown creation id gives ``None``.
        """
        if value.startswith("#"):
            return self.created_ids.get(value[1:])
        return value


class MethodRegistry:
    """Capabilities and the methods they define, looked up by method name."""

    def __init__(self) -> None:
        self._capabilities: dict[str, dict[str, Any]] = {}
        self._methods: dict[str, tuple[str, Handler]] = {}
        self._fallback: Fallback | None = None
        # Bumped by every change, so derived values (the session state) can be memoized.
        self.generation = 0

    def add_capability(self, uri: str, session_value: dict[str, Any] | None = None) -> None:
        """Declare a capability the server supports.

        Adding a known capability again replaces its session value when one is given,
        so :func:`~jmappushd.jmap.core.register_core` may add core before the limits
        are known.
        """
        if session_value is not None or uri not in self._capabilities:
            self._capabilities[uri] = dict(session_value or {})
            self.generation += 1

    def register(self, name: str, capability: str, handler: Handler) -> None:
        """Bind a method name to a handler; the capability must already be added."""
        if capability not in self._capabilities:
            raise ValueError(f"capability {capability!r} must be added before {name!r}")
        if name in self._methods:
            raise ValueError(f"method {name!r} is already registered")
        self._methods[name] = (capability, handler)
        self.generation += 1

    def unknown(self, uris: Iterable[str]) -> list[str]:
        """Those of ``uris`` that are not supported capabilities (per request: no copy)."""
        known = self._capabilities
        for uri in uris:
            if uri not in known:
                return [uri for uri in uris if uri not in known]
        return []

    def capabilities(self) -> set[str]:
        """The URIs of every supported capability."""
        return set(self._capabilities)

    def session_capabilities(self) -> dict[str, dict[str, Any]]:
        """The ``capabilities`` member of the Session object (a deep copy)."""
        return copy.deepcopy(self._capabilities)

    def lookup(self, name: str) -> tuple[str, Handler] | None:
        """The ``(capability, handler)`` registered for ``name``, or ``None``."""
        return self._methods.get(name)

    def set_fallback(self, handler: Fallback | None) -> None:
        """Install (or remove, with ``None``) the handler for unregistered methods."""
        self._fallback = handler
        self.generation += 1

    @property
    def fallback(self) -> Fallback | None:
        """The handler for unregistered methods, if any."""
        return self._fallback
