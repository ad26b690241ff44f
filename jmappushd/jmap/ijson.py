"""Strict I-JSON (RFC 7493) decoding and compact encoding for JMAP bodies.

RFC 8620 §1.5 requires all JMAP data to be I-JSON (API-19). Python's ``json`` module is
more lenient than that: it keeps the last of duplicate member names, accepts ``NaN`` and
``Infinity``, and lets escaped lone surrogates through. :func:`loads` closes those gaps and
reports every violation as the request-level ``notJSON`` problem (C-API-3).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from jmappushd.jmap.problems import RequestProblem
from jmappushd.net import _fastpath

# Code points I-JSON forbids in strings and member names (RFC 7493 §2.1): surrogates
# (only reachable through \u escapes, since the UTF-8 decoder rejects encoded ones) and
# Unicode noncharacters (U+FDD0..U+FDEF and the last two code points of every plane).
_FORBIDDEN = re.compile(
    "[\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(17))
    + "]"
)

_SUSPECT_ESCAPE = re.compile(r"\\u[dDfF]")


class _Invalid(ValueError):
    """Internal signal from the parser hooks; turned into ``notJSON`` by :func:`loads`."""


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build an object, refusing duplicate member names (RFC 7493 §2.3)."""
    result = dict(pairs)
    if len(result) != len(pairs):  # rare: only then look for the culprit
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Invalid(f"duplicate member name {key!r}")
            seen.add(key)
    return result


def _constant(name: str) -> Any:
    """Refuse the non-standard ``NaN``/``Infinity`` literals Python would accept."""
    raise _Invalid(f"{name} is not a JSON number")


def _float(text: str) -> float:
    """Parse a number, refusing ones that overflow an IEEE double (RFC 7493 §2.2)."""
    value = float(text)
    if not math.isfinite(value):
        raise _Invalid("number out of range")
    return value


def _check_strings(value: Any) -> None:
    """Walk the decoded value iteratively and refuse forbidden code points."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _FORBIDDEN.search(item):
                raise _Invalid("string contains a surrogate or a noncharacter")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def loads(data: bytes) -> Any:
    """Decode a UTF-8 I-JSON document or raise ``RequestProblem("notJSON")``.

    The problem detail names the reason but never echoes the body back.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestProblem("notJSON", "The body is not valid UTF-8.") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object_pairs,
            parse_constant=_constant,
            parse_float=_float,
        )
        # Noncharacters can stand in the text as themselves (never in ASCII text,
        # which Python knows without a scan); surrogates and noncharacters alike can
        # hide behind \u escapes, whose first hex digit is then d or f. Only a
        # document with either needs the walk over every decoded string.
        if ((not text.isascii() and _FORBIDDEN.search(text))
                or ("\\u" in text and _SUSPECT_ESCAPE.search(text))):
            _check_strings(value)
    except _Invalid as e:
        raise RequestProblem("notJSON", f"The body is not I-JSON: {e}.") from None
    except json.JSONDecodeError as e:
        detail = f"The body is not valid JSON: {e.msg} at offset {e.pos}."
        raise RequestProblem("notJSON", detail) from None
    except (ValueError, RecursionError):
        # Over-long integer literals (int max str digits) and absurd nesting depth.
        raise RequestProblem("notJSON", "The body is not valid JSON.") from None
    return value


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# ``json.dumps`` with non-default options builds a new JSONEncoder, and every
# ``encode`` builds a new C encoder; one built once halves the cost of the small
# documents fan-out encodes per listener (None where the C accelerator is absent).
_C_ENCODE = _fastpath.c_encoder(_ENCODER.default)


def dumps(obj: Any) -> bytes:
    """Encode as compact UTF-8 JSON; non-finite floats are a programming error."""
    if _C_ENCODE is not None and _fastpath.C_ENCODER and isinstance(obj, dict):
        return "".join(_C_ENCODE(obj, 0)).encode("utf-8")
    return _ENCODER.encode(obj).encode("utf-8")
