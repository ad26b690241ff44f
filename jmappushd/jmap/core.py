"""The methods of the ``urn:ietf:params:jmap:core`` capability (RFC 8620 §4)."""

from __future__ import annotations

from typing import Any

from jmappushd.jmap.registry import CORE_CAPABILITY, CallContext, MethodRegistry


def echo(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """``Core/echo``: return the arguments unchanged (API-15); lets clients test the link."""
    return dict(args)


def register_core(registry: MethodRegistry) -> None:
    """Add the core capability (if absent) and its ``Core/echo`` method."""
    registry.add_capability(CORE_CAPABILITY)
    registry.register("Core/echo", CORE_CAPABILITY, echo)
