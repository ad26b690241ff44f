"""CPython's json: one C encoder built once and reused for every ``dumps``."""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _json_encoder
from typing import Any

C_ENCODER = getattr(_json_encoder, "c_make_encoder", None) is not None
"""One C JSON encoder may be built once and reused for every ``dumps``."""


def c_encoder(default: Callable[[Any], Any]) -> Callable[[Any, int], list[str]] | None:
    """A reusable C encoder for compact, non-ASCII-escaping, NaN-refusing JSON, or ``None``.

    Reproduces ``JSONEncoder(separators=(",", ":"), ensure_ascii=False,
    allow_nan=False).encode`` for dicts, which builds this same encoder on every call.
    """
    make = getattr(_json_encoder, "c_make_encoder", None)
    if make is None:
        return None
    built: Callable[[Any, int], list[str]] = make(
        None, default, _json_encoder.encode_basestring, None, ":", ",", False, False, False)
    return built


def probe_c_encoder() -> bool:
    """The reused encoder's output equals ``json.dumps`` with the same options."""
    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    encode = c_encoder(plain.default)
    sample = {"@type": "StateChange", "é": [1, 2.5, None, True, "\u2028\n"], "n": {}}
    return encode is not None and "".join(encode(sample, 0)) == plain.encode(sample)
