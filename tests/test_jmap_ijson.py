"""I-JSON decoding and encoding (API-19, C-API-3, API-8 notJSON)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jmappushd.jmap import ijson
from jmappushd.jmap.problems import PROBLEM_CONTENT_TYPE, RequestProblem


def _not_json(data: bytes) -> RequestProblem:
    with pytest.raises(RequestProblem) as info:
        ijson.loads(data)
    assert info.value.kind == "notJSON"
    assert info.value.type == "urn:ietf:params:jmap:error:notJSON"
    return info.value


def test_loads_valid_document() -> None:
    """A well-formed UTF-8 document decodes to the same Python value."""
    data = '{"a":[1,2.5,true,null],"b":"é😀"}'.encode()
    assert ijson.loads(data) == {"a": [1, 2.5, True, None], "b": "é😀"}


def test_escaped_surrogate_pair_is_accepted() -> None:
    """API-19: an escaped surrogate *pair* is one valid character, not a lone surrogate."""
    assert ijson.loads(b'"\\ud83d\\ude00"') == "😀"


def test_duplicate_member_names_rejected() -> None:
    """C-API-3: duplicate member names are refused with notJSON, not last-one-wins."""
    problem = _not_json(b'{"using":[],"using":["x"]}')
    assert "duplicate" in problem.detail


def test_duplicate_in_nested_object_rejected() -> None:
    """C-API-3: duplicates are found at any depth."""
    _not_json(b'{"methodCalls":[["Core/echo",{"x":1,"x":2},"c"]]}')


def test_invalid_utf8_rejected() -> None:
    """API-8: a body that is not UTF-8 is notJSON."""
    problem = _not_json(b'{"a":"\xff"}')
    assert "UTF-8" in problem.detail


def test_encoded_surrogate_bytes_rejected() -> None:
    """API-19: CESU-style encoded surrogates are not valid UTF-8."""
    _not_json(b'"\xed\xa0\x80"')


def test_syntax_error_rejected() -> None:
    """API-8: invalid JSON syntax is notJSON with status 400 (C-API-2)."""
    problem = _not_json(b'{"a":')
    assert problem.status == 400


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"[1e999]"])
def test_non_finite_numbers_rejected(literal: bytes) -> None:
    """I-JSON numbers are finite doubles; Python's NaN/Infinity extensions are refused."""
    _not_json(literal)


@pytest.mark.parametrize("text", [b'"\\ud800"', b'{"\\udc00":1}', b'["a\\udbff"]'])
def test_lone_surrogate_escapes_rejected(text: bytes) -> None:
    """API-19: lone surrogates in values or member names are refused (RFC 7493 §2.1)."""
    _not_json(text)


@pytest.mark.parametrize("text", [
    b'"\\uffff"', b'"\\ufdd0"', b'"\\uFDEF"', '"\U0010fffe"'.encode(),
    '{"k\ufdd0":1}'.encode(), b'["\\uD83F\\uDFFE"]', b'{"a":{"b":["x\\uFFFEy"]}}',
])
def test_noncharacters_rejected(text: bytes) -> None:
    """RFC 7493 §2.1 also forbids Unicode noncharacters in strings, written as
    themselves or escaped (a supplementary one as a surrogate pair)."""
    _not_json(text)


@pytest.mark.parametrize("text, value", [
    (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, then plain text
    (b'"\\uD7FF\\uFDCF\\uFDF0\\uFFFD"', "\ud7ff\ufdcf\ufdf0\ufffd"),
    (b'"\\uD83D\\uDE00"', "\U0001f600"),  # a valid surrogate pair
])
def test_allowed_escapes_near_the_forbidden_ranges(text: bytes, value: str) -> None:
    """Escapes that merely look suspicious are decoded exactly, not refused."""
    assert ijson.loads(text) == value


def test_empty_body_rejected() -> None:
    """An empty body is not a JSON text."""
    _not_json(b"")


def test_huge_integer_literal_rejected() -> None:
    """An integer literal beyond Python's digit limit is notJSON, not a crash."""
    _not_json(b"1" * 5000)


def test_deep_nesting_rejected() -> None:
    """Absurd nesting is notJSON rather than an unhandled RecursionError."""
    _not_json(b"[" * 100_000 + b"]" * 100_000)


def _depth(value: Any) -> int:
    """Nesting depth of a decoded value, by an explicit stack (the test's own oracle)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            stack.extend((v, level) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def test_nesting_bound_is_exact_at_parse() -> None:
    """Issue 11 defect 2: MAX_NESTING levels parse; one more is notJSON whose detail
    names the bound, before the C decoder (which recurses) sees it. 500 levels, which
    the decoder would accept and later steps would crash on, are refused the same way."""
    bound = ijson.MAX_NESTING
    assert ijson.loads(b"[" * bound + b"]" * bound) is not None
    for depth in (bound + 1, 500):
        detail = _not_json(b'{"a":' * (depth - 1) + b"[]" + b"}" * (depth - 1)).detail
        assert f"deeper than {bound} levels" in detail


def test_nesting_in_strings_does_not_count() -> None:
    """Brackets, quotes and backslashes inside strings are not structure: a string full
    of them parses, and they cannot hide real nesting either."""
    tricky = '"[[[{{{\\"\\\\\\"]]]' * 100 + '"'
    assert isinstance(ijson.loads(f"[{json.dumps(tricky)}]".encode()), list)
    hidden = ("[" + json.dumps("]" * 200) + ",") * 129 + "1" + "]" * 129
    assert not ijson.nesting_deeper_than(b"[" * 128 + b"]" * 128)
    assert ijson.nesting_deeper_than(hidden.encode())
    _not_json(hidden.encode())


_SCALARS = st.none() | st.booleans() | st.integers() | st.text(
    alphabet=st.sampled_from('ab"\\[]{}:,\u00e9\n'), max_size=6)


@settings(max_examples=300, deadline=None)
@given(value=st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(alphabet='k"[\\', max_size=3), inner,
                                            max_size=3), max_leaves=40),
       bound=st.integers(0, 12))
def test_nesting_deeper_than_matches_the_decoded_depth(value: Any, bound: int) -> None:
    """For any JSON value (strings full of structural characters included) and bound,
    the byte-level check agrees with the depth of the decoded value."""
    data = json.dumps(value, ensure_ascii=False).encode()
    assert ijson.nesting_deeper_than(data, bound) == (_depth(value) > bound)


def test_nesting_check_of_a_large_flat_document_is_fast() -> None:
    """The check is C-speed byte work for wide documents: 10 MB of small arrays is
    answered without a per-bracket Python loop over all of it (well under a second)."""
    data = b"[" + b"[]," * 3_300_000 + b"[]]"
    started = time.perf_counter()
    assert not ijson.nesting_deeper_than(data)
    assert time.perf_counter() - started < 1.0


def test_encode_string_matches_dumps() -> None:
    """encode_string writes a string exactly as dumps writes it inside a document."""
    for text in ("", "é😀", 'q"\\\n\u2028'):
        assert ijson.encode_string(text) == ijson.dumps([text])[1:-1]


def test_dumps_is_compact_utf8() -> None:
    """Encoding is compact and keeps non-ASCII characters as UTF-8 bytes."""
    assert ijson.dumps({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'.encode()


def test_dumps_matches_the_standard_encoder() -> None:
    """The prebuilt encoder gives byte for byte what json.dumps gives with the same options."""
    import json
    doc = {"@type": "StateChange", "changed": {"A\u00e9": {"Email": "s\"1\\\n"}},
           "n": [1, 2.5, -0.0, 1e300, None, True, False], "e": {}, "l": []}
    assert ijson.dumps(doc) == json.dumps(doc, separators=(",", ":"), ensure_ascii=False,
                                          allow_nan=False).encode("utf-8")


def test_dumps_refuses_nan() -> None:
    """Encoding a non-finite float is a programming error, never invalid JSON output."""
    with pytest.raises(ValueError):
        ijson.dumps(float("nan"))
    with pytest.raises(ValueError):
        ijson.dumps({"a": [float("inf")]})


def test_problem_json_shape() -> None:
    """API-8: problem details carry type, title, status, detail and, for limits, limit."""
    problem = RequestProblem("limit", "too many calls", limit="maxCallsInRequest")
    body = problem.to_json()
    assert body["type"] == "urn:ietf:params:jmap:error:limit"
    assert body["status"] == 400
    assert body["detail"] == "too many calls"
    assert body["limit"] == "maxCallsInRequest"
    assert isinstance(body["title"], str) and body["title"]
    assert "limit" not in RequestProblem("notRequest", "x").to_json()
    assert PROBLEM_CONTENT_TYPE == b"application/problem+json"


def _outcome(decode: Any, text: str) -> tuple[str, Any]:
    try:
        return "value", decode(text)
    except json.JSONDecodeError as e:
        return "JSONDecodeError", (e.msg, e.pos, e.lineno, e.colno)
    except Exception as e:
        return type(e).__name__, str(e)


def _json_loads(text: str) -> Any:
    """What ``ijson`` called before it kept one decoder: ``json.loads`` with the hooks."""
    return json.loads(text, object_pairs_hook=ijson._object_pairs,
                      parse_constant=ijson._constant, parse_float=ijson._float)


@pytest.mark.parametrize("text", [
    '{"a":1,"b":[1.5,true,null,"x"]}', '\ufeff{"a":1}', '\ufeff', "", " ", '{"a":1} x',
    '{"a":1,"a":2}', "[NaN]", "[-Infinity]", "[1e400]", '{"a":', '["\\ud800"]', "[1,]",
    '{"k":{"k":{"k":[]}}}', "12345678901234567890", '"\\u00e9"', "[1] [2]", "\n[1]\n"])
def test_the_reused_decoder_answers_as_json_loads(text: str) -> None:
    """One decoder kept for every document gives the values and errors (message and
    position) of ``json.loads`` with the same hooks, the leading BOM included."""
    assert _outcome(ijson._decode, text) == _outcome(_json_loads, text)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=20))
def test_the_reused_decoder_answers_as_json_loads_on_any_value(value: Any) -> None:
    """Also on generated documents (NaN and infinities included, which both refuse)."""
    text = json.dumps(value)
    assert _outcome(ijson._decode, text) == _outcome(_json_loads, text)
