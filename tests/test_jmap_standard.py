"""Standard /get and /set argument helpers (API-11, API-16..API-19, C-API-4)."""

from __future__ import annotations

from typing import Any

import pytest

from jmappushd.jmap.registry import MethodError
from jmappushd.jmap.standard import (
    SetRequest,
    check_allowed_args,
    get_id_list,
    is_valid_id,
    none_if_empty,
    optional_str_list,
    set_error,
    set_request_parts,
)


def _raises(fn: Any, *args: Any, **kw: Any) -> MethodError:
    with pytest.raises(MethodError) as info:
        fn(*args, **kw)
    return info.value


@pytest.mark.parametrize("value", ["a", "A9-_", "x" * 255, "0abc", "NIL"])
def test_valid_ids(value: str) -> None:
    """API-19: 1-255 characters from A-Za-z0-9-_ are valid Ids (SHOULD-avoid forms too)."""
    assert is_valid_id(value)


@pytest.mark.parametrize("value", ["", "x" * 256, "a b", "a.b", "é", "a\n", "#a", 5, None])
def test_invalid_ids(value: Any) -> None:
    """API-19: empty, too long, other characters and non-strings are not Ids."""
    assert not is_valid_id(value)


def test_allowed_args_pass() -> None:
    """Known arguments are accepted."""
    check_allowed_args({"ids": None, "properties": None}, {"ids", "properties"})


def test_unknown_argument_is_named() -> None:
    """API-11 / C-API-4: an unknown argument such as accountId is invalidArguments naming it."""
    err = _raises(check_allowed_args, {"ids": None, "accountId": "A"}, {"ids", "properties"})
    assert err.type == "invalidArguments"
    assert "accountId" in (err.description or "")


def test_id_list_absent_or_null() -> None:
    """API-16: `ids` absent or null means "all" and reads as None."""
    assert get_id_list({}, "ids", 10) is None
    assert get_id_list({"ids": None}, "ids", 10) is None


def test_id_list_dedupes_in_order() -> None:
    """API-16: an id asked for twice is returned once, first occurrence kept."""
    assert get_id_list({"ids": ["b", "a", "b"]}, "ids", 10) == ["b", "a"]


@pytest.mark.parametrize("value", ["x", [1], ["ok", ""], {"a": 1}, ["a b"]])
def test_id_list_wrong_type(value: Any) -> None:
    """API-11: `ids` of the wrong type (e.g. "x") is invalidArguments."""
    assert _raises(get_id_list, {"ids": value}, "ids", 10).type == "invalidArguments"


def test_id_list_too_large() -> None:
    """API-16: more ids than maxObjectsInGet is requestTooLarge; exactly max is fine."""
    assert get_id_list({"ids": ["a", "b"]}, "ids", 2) == ["a", "b"]
    assert _raises(get_id_list, {"ids": ["a", "b", "c"]}, "ids", 2).type == "requestTooLarge"


def test_str_list() -> None:
    """API-16: `properties` is String[]|null; unknown names are invalidArguments."""
    assert optional_str_list({}, "properties") is None
    assert optional_str_list({"properties": None}, "properties") is None
    assert optional_str_list({"properties": ["id", "types", "id"]}, "properties",
                             {"id", "types"}) == ["id", "types"]
    err = _raises(optional_str_list, {"properties": ["id", "nope"]}, "properties", {"id"})
    assert err.type == "invalidArguments" and "nope" in (err.description or "")
    assert _raises(optional_str_list, {"properties": "id"}, "properties").type == (
        "invalidArguments")
    assert _raises(optional_str_list, {"properties": [1]}, "properties").type == (
        "invalidArguments")


def test_set_parts_empty() -> None:
    """API-17: absent or null create/update/destroy read as empty."""
    assert set_request_parts({}, 5) == SetRequest({}, {}, [])
    assert set_request_parts({"create": None, "update": None, "destroy": None}, 5) == (
        SetRequest({}, {}, []))


def test_set_parts_values() -> None:
    """API-17 / API-13 errata: update keys and destroy entries may be #creationIds."""
    parts = set_request_parts(
        {"create": {"k1": {"url": "u"}}, "update": {"#k1": {}, "S1": {"types": None}},
         "destroy": ["S2", "#k1", "S2"]},
        10,
    )
    assert parts.create == {"k1": {"url": "u"}}
    assert parts.update == {"#k1": {}, "S1": {"types": None}}
    assert parts.destroy == ["S2", "#k1"]


@pytest.mark.parametrize(
    "args",
    [
        {"create": []},
        {"create": {"k1": "x"}},
        {"create": {"#k1": {}}},
        {"create": {"a b": {}}},
        {"update": {"S1": []}},
        {"update": ["S1"]},
        {"update": {"#": {}}},
        {"destroy": "S1"},
        {"destroy": [1]},
        {"destroy": ["a/b"]},
    ],
)
def test_set_parts_wrong_types(args: dict[str, Any]) -> None:
    """API-11 / API-17: wrongly typed /set parts are invalidArguments."""
    assert _raises(set_request_parts, args, 10).type == "invalidArguments"


def test_set_parts_too_large() -> None:
    """API-17: create+update+destroy together above maxObjectsInSet is requestTooLarge."""
    args = {"create": {"a": {}}, "update": {"B": {}}, "destroy": ["C"]}
    assert len(set_request_parts(args, 3).destroy) == 1
    assert _raises(set_request_parts, args, 2).type == "requestTooLarge"


def test_set_error_shape() -> None:
    """API-18: a SetError has type, and description/properties only when given."""
    assert set_error("notFound") == {"type": "notFound"}
    assert set_error("invalidProperties", "bad url", ["url"]) == {
        "type": "invalidProperties", "description": "bad url", "properties": ["url"]}


def test_none_if_empty() -> None:
    """RFC 8620 §5.3: empty /set response maps are null."""
    assert none_if_empty({}) is None
    assert none_if_empty([]) is None
    assert none_if_empty({"a": 1}) == {"a": 1}


def test_method_error_json() -> None:
    """API-10: a MethodError renders type, optional description and extra members."""
    assert MethodError("forbidden").to_json() == {"type": "forbidden"}
    assert MethodError("invalidArguments", "why", arguments=["x"]).to_json() == {
        "type": "invalidArguments", "description": "why", "arguments": ["x"]}
