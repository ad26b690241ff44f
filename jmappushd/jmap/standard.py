"""Argument checks shared by standard /get and /set methods (RFC 8620 §5.1, §5.3).

Each helper raises a :class:`~jmappushd.jmap.registry.MethodError` with the exact error
type the RFC names (``invalidArguments``, API-11; ``requestTooLarge``, API-16/API-17), so
method handlers read as a list of checks.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

from jmappushd.jmap.problems import quoted
from jmappushd.jmap.registry import MethodError

_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


def is_valid_id(value: Any) -> bool:
    """True for an RFC 8620 §1.2 Id: 1 to 255 characters of ``A-Za-z0-9_-`` (API-19)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _invalid(description: str) -> MethodError:
    return MethodError("invalidArguments", description)


def check_allowed_args(args: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Refuse any argument not in ``allowed``, naming it (API-11, C-API-4)."""
    unknown = sorted(key for key in args if key not in allowed)
    if unknown:
        raise _invalid(f"Unknown argument {quoted(unknown[0])}.")


def _is_id_or_ref(value: Any) -> bool:
    """An Id, or ``#creationId`` referring to a record created earlier (API-13 errata)."""
    if isinstance(value, str) and value.startswith("#"):
        return is_valid_id(value[1:])
    return is_valid_id(value)


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def get_id_list(args: Mapping[str, Any], key: str, max_objects: int) -> list[str] | None:
    """Read an ``Id[]|null`` argument such as /get ``ids`` (API-16).

    Absent or null → ``None``. Duplicates are dropped (first occurrence kept), since an
    id asked for twice must appear once in ``list``/``notFound``. More entries than
    ``max_objects`` → ``requestTooLarge``; a non-array or a non-Id entry →
    ``invalidArguments``.
    """
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(is_valid_id(v) for v in value):
        raise _invalid(f"{key!r} must be an array of Ids or null.")
    if len(value) > max_objects:
        raise MethodError(
            "requestTooLarge", f"{key!r} has {len(value)} entries; at most {max_objects}."
        )
    return _unique(value)


def optional_str_list(
    args: Mapping[str, Any], key: str, allowed: Collection[str] | None = None
) -> list[str] | None:
    """Read a ``String[]|null`` argument such as /get ``properties``.

    Absent or null → ``None``. With ``allowed``, an entry outside it is
    ``invalidArguments`` naming the entry (API-16: unknown property).
    """
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"{key!r} must be an array of strings or null.")
    if allowed is not None:
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise _invalid(f"{key!r} names unknown value {quoted(unknown[0])}.")
    return _unique(value)


class SetRequest(NamedTuple):
    """The validated ``create``/``update``/``destroy`` parts of a /set call.

    Missing or null parts are empty. ``update`` keys and ``destroy`` entries may be
    ``#creationId`` (errata to RFC 8620 §5.3); resolve them with
    :meth:`~jmappushd.jmap.registry.CallContext.resolve_id` and report results under
    the key exactly as the client sent it.
    """

    create: dict[str, dict[str, Any]]
    update: dict[str, dict[str, Any]]
    destroy: list[str]


def _object_map(args: Mapping[str, Any], key: str, *, allow_refs: bool) -> dict[str, Any]:
    value = args.get(key)
    if value is None:
        return {}
    check = _is_id_or_ref if allow_refs else is_valid_id
    if not isinstance(value, dict) or not all(
        check(k) and isinstance(v, dict) for k, v in value.items()
    ):
        raise _invalid(f"{key!r} must be an object mapping Ids to objects, or null.")
    return dict(value)


def set_request_parts(args: Mapping[str, Any], max_objects_in_set: int) -> SetRequest:
    """Validate the three /set parts and their combined size (API-17).

    Wrong types → ``invalidArguments``; more than ``max_objects_in_set`` creates,
    updates and destroys together → ``requestTooLarge``.
    """
    create = _object_map(args, "create", allow_refs=False)
    update = _object_map(args, "update", allow_refs=True)
    destroy = args.get("destroy")
    if destroy is None:
        destroy = []
    if not isinstance(destroy, list) or not all(_is_id_or_ref(v) for v in destroy):
        raise _invalid("'destroy' must be an array of Ids or null.")
    total = len(create) + len(update) + len(destroy)
    if total > max_objects_in_set:
        raise MethodError(
            "requestTooLarge", f"The request has {total} changes; at most {max_objects_in_set}."
        )
    return SetRequest(create, update, _unique(destroy))


def set_error(
    type: str, description: str | None = None, properties: list[str] | None = None
) -> dict[str, Any]:
    """A SetError object for ``notCreated``/``notUpdated``/``notDestroyed`` (API-18)."""
    error: dict[str, Any] = {"type": type}
    if description is not None:
        error["description"] = description
    if properties is not None:
        error["properties"] = list(properties)
    return error


def none_if_empty(value: Mapping[str, Any] | list[Any]) -> Any:
    """/set response maps are ``null`` rather than empty (RFC 8620 §5.3)."""
    return value if value else None
