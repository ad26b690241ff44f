"""Result references between calls of one request (RFC 8620 §3.7, API-12).

An argument named ``#foo`` holds ``{"resultOf", "name", "path"}`` and is replaced, before
the method runs, by the value ``path`` selects in an earlier response. ``path`` is an
RFC 6901 JSON Pointer extended with ``*``, which maps the rest of the pointer over every
item of an array and flattens array results into one array. Pure functions only.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from jmappushd.jmap.registry import MethodError

_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_WILDCARD = "*"


class PointerError(ValueError):
    """The pointer is malformed or selects nothing."""


def _tokens(pointer: str) -> list[str]:
    """Split and unescape a JSON Pointer (RFC 6901 §3, §4: ``~1`` before ``~0``)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PointerError("a non-empty pointer must start with '/'")
    tokens = pointer[1:].split("/")
    for token in tokens:
        if re.search(r"~(?![01])", token):
            raise PointerError("'~' must be followed by '0' or '1'")
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _evaluate(value: Any, tokens: Sequence[str]) -> Any:
    """Apply the remaining ``tokens`` to ``value`` (RFC 6901 §4 plus the JMAP ``*``)."""
    for position, token in enumerate(tokens):
        if isinstance(value, list):
            if token == _WILDCARD:
                rest = tokens[position + 1 :]
                mapped: list[Any] = []
                for item in value:
                    result = _evaluate(item, rest)
                    if isinstance(result, list):
                        mapped.extend(result)
                    else:
                        mapped.append(result)
                return mapped
            if not _ARRAY_INDEX.fullmatch(token) or int(token) >= len(value):
                raise PointerError(f"no array item {token!r}")
            value = value[int(token)]
        elif isinstance(value, dict):
            if token not in value:
                raise PointerError(f"no member {token!r}")
            value = value[token]
        else:
            raise PointerError(f"cannot descend into a scalar with {token!r}")
    return value


def evaluate_pointer(document: Any, pointer: str) -> Any:
    """Evaluate a JMAP-extended JSON Pointer against ``document``.

    Raises :class:`PointerError` when the pointer is malformed or does not resolve.
    """
    return _evaluate(document, _tokens(pointer))


def _resolve_one(reference: Any, responses: Sequence[Sequence[Any]]) -> Any:
    """Resolve one ResultReference object against the earlier responses."""
    if not isinstance(reference, dict) or not all(
        isinstance(reference.get(key), str) for key in ("resultOf", "name", "path")
    ):
        raise MethodError(
            "invalidResultReference",
            "A result reference needs string resultOf, name and path.",
        )
    call_id, name, path = reference["resultOf"], reference["name"], reference["path"]
    # The *first* response with that call id counts, even if it is an error (API-12).
    target = next((r for r in responses if r[2] == call_id), None)
    if target is None:
        raise MethodError("invalidResultReference", f"No earlier response for call {call_id!r}.")
    if target[0] != name:
        raise MethodError(
            "invalidResultReference",
            f"Response for call {call_id!r} is {target[0]!r}, not {name!r}.",
        )
    try:
        value = evaluate_pointer(target[1], path)
    except PointerError as e:
        raise MethodError("invalidResultReference", f"Path {path!r}: {e}.") from None
    # A copy, so a handler mutating its arguments cannot alter an earlier response.
    return copy.deepcopy(value)


def resolve_references(
    args: dict[str, Any], responses: Sequence[Sequence[Any]]
) -> dict[str, Any]:
    """Return ``args`` with every ``#name`` argument replaced by its resolved value.

    ``responses`` is the ``methodResponses`` list so far (``[name, args, callId]``).
    Raises ``MethodError("invalidArguments")`` when both ``x`` and ``#x`` are present and
    ``MethodError("invalidResultReference")`` when any reference fails. ``args`` is not
    modified.
    """
    for key in args:
        if key.startswith("#") and key[1:] in args:
            raise MethodError(
                "invalidArguments", f"Argument {key[1:]!r} is given both plainly and as {key!r}."
            )
    if not any(key.startswith("#") for key in args):
        return args
    resolved: dict[str, Any] = {}
    for key, value in args.items():
        if key.startswith("#"):
            resolved[key[1:]] = _resolve_one(value, responses)
        else:
            resolved[key] = value
    return resolved
