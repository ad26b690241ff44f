"""rules.publish_json: the checked JSON of a publish, as every store writes it.

Its quick path checks the whole map with set-of-types tests; these tests hold it to
the walk one state at a time (``walked_publish_json``): the same text and count for
every accepted map, the same exception type and message for every refused one.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jmappushd.store.rules import publish_json, walked_publish_json


def _answer(function: Any, changed: Any) -> tuple[str, Any]:
    try:
        return "value", function(changed)
    except (TypeError, ValueError) as e:
        return type(e).__name__, str(e)


@pytest.mark.parametrize("changed", [
    {"A": {"Email": "s1", "Mailbox": "m1"}, "B": {"Email": "\u00e9\u2028\U0001f600"}},
    {"A": {"Email": "s"}, "B": {}}, {"A": {}}, {},
    {"A": {"Email": 1}}, {1: {"Email": "s"}}, {"A": {2: "s"}}, {"A": {"Email": None}},
    {"A": MappingProxyType({"Email": "s"})}, {"A": MappingProxyType({"Email": 3})},
    {"A": {"Email": "s"}, "B": {"Email": b"s"}},
])
def test_the_quick_check_answers_as_the_walk(changed: dict[Any, Any]) -> None:
    """Accepted maps give the walk's text and count; refused ones its very error."""
    assert _answer(publish_json, changed) == _answer(walked_publish_json, changed)


_part = st.one_of(st.text(max_size=3), st.integers(0, 2), st.none())


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_part, st.dictionaries(_part, _part, max_size=3), max_size=4))
def test_the_quick_check_answers_as_the_walk_on_generated_maps(
        changed: dict[Any, Any]) -> None:
    assert _answer(publish_json, changed) == _answer(walked_publish_json, changed)
