"""Result references between calls of one request (RFC 8620 §3.7, API-12).

An argument named ``#foo`` holds ``{"resultOf", "name", "path"}`` and is replaced, before
the method runs, by the value ``path`` selects in an earlier response. ``path`` is an
RFC 6901 JSON Pointer extended with ``*``, which maps the rest of the pointer over every
item of an array and flattens array results into one array.

Nothing here recurses on the client's data: the pointer is applied level by level to
a list of values (every path of one pointer has the same length, so a breadth-first
walk keeps the order a depth-first one gives). The selected values are the earlier
response's own objects, not copies: earlier responses are already encoded (see
``jmap.processor``), so a handler cannot change what was sent, and sharing makes a
reference cost no memory. Handlers must still treat their arguments as read-only,
since a later reference would see a change. With a
:class:`~jmappushd.jmap.budget.ResponseBudget`, every value a path steps through is
counted, and the encoded size of everything one call's references select must fit
in what the budget has left, or :class:`~jmappushd.jmap.budget.OverBudget` is
raised before the method runs. The encoded size of a selection is at most that of the
response it comes from, which the budget already admitted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from jmappushd.jmap.budget import OverBudget, ResponseBudget
from jmappushd.jmap.ijson import MAX_NESTING, dumps, encode_string, nesting_deeper_than
from jmappushd.jmap.problems import quoted
from jmappushd.jmap.registry import MethodError

_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_BAD_TILDE = re.compile(r"~(?![01])")
_WILDCARD = "*"
_PATH_STEPS = "Evaluating the result references' paths"


class PointerError(ValueError):
    """The pointer is malformed or selects nothing."""


def _tokens(pointer: str) -> list[str]:
    """Split and unescape a JSON Pointer (RFC 6901 §3, §4: ``~1`` before ``~0``)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PointerError("a non-empty pointer must start with '/'")
    tokens = pointer[1:].split("/")
    if "~" not in pointer:
        return tokens
    if _BAD_TILDE.search(pointer):
        raise PointerError("'~' must be followed by '0' or '1'")
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _step(value: Any, token: str) -> Any:
    """One RFC 6901 step into an array item or object member."""
    if isinstance(value, list):
        if not _ARRAY_INDEX.fullmatch(token) or int(token) >= len(value):
            raise PointerError(f"no array item {quoted(token)}")
        return value[int(token)]
    if isinstance(value, dict):
        if token not in value:
            raise PointerError(f"no member {quoted(token)}")
        return value[token]
    raise PointerError(f"cannot descend into a scalar with {quoted(token)}")


def _evaluate(value: Any, tokens: Sequence[str], budget: ResponseBudget | None) -> Any:
    """Apply ``tokens`` to ``value`` (RFC 6901 §4 plus the JMAP ``*``), without recursion.

    ``values`` holds, in document order, what the pointer so far selects. Until a
    ``*`` meets an array there is one value and the result is that value; after it,
    every selected value is one result of the mapping, and the results are joined
    with arrays flattened one level, as the nested mappings of §3.7 would join them.
    """
    values = [value]
    mapped = False
    for token in tokens:
        if budget is not None:
            budget.steps(len(values), _PATH_STEPS)
        if token != _WILDCARD:
            values = [_step(v, token) for v in values]
            continue
        selected: list[Any] = []
        for v in values:
            if isinstance(v, list):
                if budget is not None:
                    budget.steps(len(v), _PATH_STEPS)
                selected.extend(v)
                mapped = True
            else:
                selected.append(_step(v, token))  # "*" names a member of an object
        values = selected
    if not mapped:
        return values[0]
    flat: list[Any] = []
    for v in values:
        if isinstance(v, list):
            if budget is not None:
                budget.steps(len(v), _PATH_STEPS)
            flat.extend(v)
        else:
            flat.append(v)
    return flat


def evaluate_pointer(document: Any, pointer: str, budget: ResponseBudget | None = None) -> Any:
    """Evaluate a JMAP-extended JSON Pointer against ``document``.

    Raises :class:`PointerError` when the pointer is malformed or does not resolve,
    and :class:`OverBudget` when ``budget`` cannot pay for the values it steps through.
    """
    return _evaluate(document, _tokens(pointer), budget)


def _target(reference: Any, responses: Sequence[Sequence[Any]]) -> tuple[int, str]:
    """The index of the response ``reference`` points into, and its path."""
    if not isinstance(reference, dict) or not all(
        isinstance(reference.get(key), str) for key in ("resultOf", "name", "path")
    ):
        raise MethodError(
            "invalidResultReference",
            "A result reference needs string resultOf, name and path.",
        )
    call_id, name, path = reference["resultOf"], reference["name"], reference["path"]
    # The *first* response with that call id counts, even if it is an error (API-12).
    index = next((i for i, r in enumerate(responses) if r[2] == call_id), None)
    if index is None:
        raise MethodError("invalidResultReference",
                          f"No earlier response for call {quoted(call_id)}.")
    if responses[index][0] != name:
        raise MethodError(
            "invalidResultReference",
            f"Response for call {quoted(call_id)} is {quoted(responses[index][0])}, "
            f"not {quoted(name)}.",
        )
    return index, path


def _select(key: str, index: int, path: str, responses: Sequence[Sequence[Any]],
            budget: ResponseBudget | None) -> tuple[Any, int]:
    """The value ``path`` selects in ``responses[index]`` and its encoded size.

    The value becomes a member of the arguments object, so it may nest one level
    less than :data:`~jmappushd.jmap.ijson.MAX_NESTING`.
    """
    if budget is not None:
        budget.steps(path.count("/"), _PATH_STEPS)  # before splitting a long path
    try:
        value = _evaluate(responses[index][1], _tokens(path), budget)
    except PointerError as e:
        raise MethodError("invalidResultReference", f"Path {quoted(path)}: {e}.") from None
    encoded = dumps(value)
    if nesting_deeper_than(encoded, MAX_NESTING - 1):
        raise MethodError(
            "invalidArguments", f"The value of {quoted(key)} nests deeper than {MAX_NESTING - 1} "
            "levels, the server's limit.")
    return value, len(encoded)


def resolve_references(
    args: dict[str, Any], responses: Sequence[Sequence[Any]],
    budget: ResponseBudget | None = None,
) -> dict[str, Any]:
    """Return ``args`` with every ``#name`` argument replaced by its resolved value.

    ``responses`` is the ``methodResponses`` list so far (``[name, args, callId]``).
    Raises ``MethodError("invalidArguments")`` when both ``x`` and ``#x`` are present and
    ``MethodError("invalidResultReference")`` when any reference fails. With ``budget``,
    the references' path steps are charged to it and :class:`OverBudget` is raised when
    the selected values together would not fit in what is left (nothing is charged for
    them: the method's result, which holds them, is). ``args`` is not modified.
    """
    references = [key for key in args if key.startswith("#")]
    if not references:
        return args
    for key in references:
        if key[1:] in args:
            raise MethodError(
                "invalidArguments", f"Argument {quoted(key[1:])} is given both plainly and as "
                f"{quoted(key)}."
            )
    resolved: dict[str, Any] = {}
    selected: dict[tuple[int, str], tuple[Any, int]] = {}  # the same path twice: once
    pending = 0
    for key, value in args.items():
        if not key.startswith("#"):
            resolved[key] = value
            continue
        target = _target(value, responses)
        found = selected.get(target)
        if found is None:
            found = selected[target] = _select(key, *target, responses, budget)
        resolved[key[1:]] = found[0]
        if budget is not None:
            pending += found[1] + len(encode_string(key[1:])) + 2
            if pending > budget.remaining:
                raise OverBudget(f"The result reference {quoted(key)}")
    return resolved
