"""Result references and the extended JSON Pointer (API-12)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jmappushd.jmap.budget import STEP_COST, OverBudget, ResponseBudget
from jmappushd.jmap.ijson import MAX_NESTING
from jmappushd.jmap.registry import MethodError
from jmappushd.jmap.resultref import PointerError, evaluate_pointer, resolve_references

ECHO_C1: list[Any] = ["Core/echo", {"a": [{"b": [1, 2]}, {"b": [3]}]}, "c1"]


def _ref(result_of: str = "c1", name: str = "Core/echo", path: str = "/a/*/b") -> dict[str, str]:
    return {"resultOf": result_of, "name": name, "path": path}


def _error_type(args: dict[str, Any], responses: list[list[Any]]) -> str:
    with pytest.raises(MethodError) as info:
        resolve_references(args, responses)
    return info.value.type


def test_rfc_example_star_flattens() -> None:
    """API-12: `/a/*/b` over [{b:[1,2]},{b:[3]}] resolves to [1,2,3]."""
    assert resolve_references({"#x": _ref()}, [ECHO_C1]) == {"x": [1, 2, 3]}


def test_plain_arguments_pass_through() -> None:
    """Arguments without `#` are kept as they are next to resolved ones."""
    assert resolve_references({"#x": _ref(), "y": 5}, [ECHO_C1]) == {"x": [1, 2, 3], "y": 5}


def test_wrong_name_fails() -> None:
    """API-12: the referenced response's name must equal `name`."""
    assert _error_type({"#x": _ref(name="Foo/get")}, [ECHO_C1]) == "invalidResultReference"


def test_missing_result_of_fails() -> None:
    """API-12: a `resultOf` with no earlier response fails."""
    assert _error_type({"#x": _ref(result_of="zz")}, [ECHO_C1]) == "invalidResultReference"


def test_bad_pointer_fails() -> None:
    """API-12: a path that selects nothing fails the whole call."""
    for path in ("/a/*/c", "a/b", "/a/7", "/a/01", "/a/-", "/a/~2"):
        assert _error_type({"#x": _ref(path=path)}, [ECHO_C1]) == "invalidResultReference"


def test_malformed_reference_object_fails() -> None:
    """API-12: a ResultReference lacking string resultOf/name/path cannot resolve."""
    assert _error_type({"#x": {"resultOf": "c1"}}, [ECHO_C1]) == "invalidResultReference"
    assert _error_type({"#x": "c1"}, [ECHO_C1]) == "invalidResultReference"


def test_plain_and_referenced_forms_together() -> None:
    """API-12: `x` and `#x` in one call is invalidArguments."""
    assert _error_type({"x": 1, "#x": _ref()}, [ECHO_C1]) == "invalidArguments"


def test_first_response_with_call_id_is_used() -> None:
    """API-12: the *first* response carrying that call id is the one referenced."""
    responses = [["Foo/set", {"v": 1}, "c1"], ["Core/echo", {"v": 2}, "c1"]]
    assert resolve_references({"#x": _ref(name="Foo/set", path="/v")}, responses) == {"x": 1}
    assert _error_type({"#x": _ref(path="/v")}, responses) == "invalidResultReference"


def test_error_response_cannot_be_referenced_by_method_name() -> None:
    """API-12: a call that failed produced an `error` response, so the name never matches."""
    responses = [["error", {"type": "serverFail"}, "c1"]]
    assert _error_type({"#x": _ref(path="/type")}, responses) == "invalidResultReference"


def test_resolved_value_is_shared_not_copied() -> None:
    """Issue 11: a reference costs no copy; the resolved value is the earlier response's
    own object (what was sent is frozen by the processor, see test_jmap_budget), while
    the arguments object itself is new."""
    inner = [1]
    responses: list[list[Any]] = [["Core/echo", {"a": [{"b": inner}]}, "c1"]]
    args = {"#x": _ref(path="/a/0/b")}
    resolved = resolve_references(args, responses)
    assert resolved["x"] is inner
    assert resolved is not args and "#x" in args


def test_input_arguments_not_modified() -> None:
    """Resolution returns a new mapping and leaves the request's arguments intact."""
    args = {"#x": _ref()}
    resolve_references(args, [ECHO_C1])
    assert args == {"#x": _ref()}


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", {"a/b": 1, "m~n": 2, "l": [[1, 2], 3, [4]], "o": {"*": 7}}),
        ("/a~1b", 1),
        ("/m~0n", 2),
        ("/l/0/1", 2),
        ("/l/*", [1, 2, 3, 4]),
        ("/o/*", 7),
    ],
)
def test_pointer_evaluation(pointer: str, expected: Any) -> None:
    """RFC 6901 escapes and indices work; `*` flattens over arrays, is a key on objects."""
    document = {"a/b": 1, "m~n": 2, "l": [[1, 2], 3, [4]], "o": {"*": 7}}
    assert evaluate_pointer(document, pointer) == expected


def test_star_over_empty_array() -> None:
    """`*` over an empty array yields an empty array."""
    assert evaluate_pointer({"a": []}, "/a/*/b") == []


def test_pointer_into_scalar_fails() -> None:
    """Descending into a number is an error, not a silent null."""
    with pytest.raises(PointerError):
        evaluate_pointer({"a": 1}, "/a/b")


def _oracle(value: Any, tokens: list[str]) -> Any:
    """RFC 8620 §3.7 evaluation written recursively, as the spec reads (small inputs only)."""
    for position, token in enumerate(tokens):
        if isinstance(value, list):
            if token == "*":
                mapped: list[Any] = []
                for item in value:
                    result = _oracle(item, tokens[position + 1:])
                    mapped.extend(result) if isinstance(result, list) else mapped.append(result)
                return mapped
            if not token.isdigit() or (token != "0" and token.startswith("0")) \
                    or int(token) >= len(value):
                raise PointerError(token)
            value = value[int(token)]
        elif isinstance(value, dict):
            if token not in value:
                raise PointerError(token)
            value = value[token]
        else:
            raise PointerError(token)
    return value


_DOC = st.recursive(st.integers(0, 3) | st.just("s"), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["a", "b", "*"]), inner, max_size=3),
                    max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(doc=_DOC, tokens=st.lists(st.sampled_from(["*", "a", "b", "0", "1"]), max_size=5))
def test_iterative_evaluation_matches_the_recursive_reading(doc: Any, tokens: list[str]) -> None:
    """Level-by-level evaluation selects what the recursive reading of §3.7 selects, in
    the same order, and fails exactly when it fails (`*` on an object is a member)."""
    pointer = "".join("/" + t for t in tokens)
    try:
        expected = _oracle(doc, tokens)
    except PointerError:
        with pytest.raises(PointerError):
            evaluate_pointer(doc, pointer)
        return
    assert evaluate_pointer(doc, pointer) == expected


def test_deep_wildcard_path_does_not_recurse() -> None:
    """Issue 11 defect 2: a path of 5,000 `*` over a 5,000-deep value is evaluated without
    recursion (the recursive evaluation raised RecursionError)."""
    doc: Any = [1]
    for _ in range(4_999):
        doc = [doc]
    assert evaluate_pointer(doc, "/*" * 4_999) == [1]


def test_value_deeper_than_the_bound_is_invalid_arguments() -> None:
    """Issue 11 defect 2: a referenced value that would take the arguments deeper than
    MAX_NESTING is a method error naming the bound, not serverFail."""
    doc: Any = 1
    for _ in range(MAX_NESTING):
        doc = [doc]
    responses = [["Core/echo", {"v": doc}, "c1"]]
    assert resolve_references({"#x": _ref(path="/v/0")}, responses)["x"] is doc[0]
    with pytest.raises(MethodError) as info:
        resolve_references({"#x": _ref(path="/v")}, responses)
    assert info.value.type == "invalidArguments"
    assert f"deeper than {MAX_NESTING - 1} levels" in str(info.value.description)


def test_budget_counts_steps_and_selected_size() -> None:
    """With a budget, steps are charged (STEP_COST each) and a selection larger than what
    is left raises OverBudget without charging its size."""
    responses = [["Core/echo", {"a": [{"b": "x" * 100}] * 10}, "c1"]]
    budget = ResponseBudget(10_000)
    resolve_references({"#x": _ref(path="/a/*/b")}, responses, budget)
    # the tokens, then the values at each level and the items mapped
    assert budget.used == (3 + 1 + 1 + 10 + 10) * STEP_COST
    with pytest.raises(OverBudget):
        resolve_references({"#x": _ref(path="/a")}, responses, ResponseBudget(1_000))
