"""Request bodies from the issue 11 attacks, shared by unit and end-to-end tests."""

from __future__ import annotations

from typing import Any

CORE = "urn:ietf:params:jmap:core"


def ref(result_of: str, path: str = "", name: str = "Core/echo") -> dict[str, str]:
    return {"resultOf": result_of, "name": name, "path": path}


def amplification(calls: int = 16, seed: int = 600, refs: int = 2) -> dict[str, Any]:
    """Core/echo calls, each referencing the whole previous result ``refs`` times.

    Without a bound the response grows as ``refs ** calls`` (the issue measured a 10 KB
    request producing 525 MB).
    """
    methods: list[list[Any]] = [["Core/echo", {"seed": "x" * seed}, "c0"]]
    for i in range(1, calls):
        args = {f"#r{j}": ref(f"c{i - 1}") for j in range(refs)}
        methods.append(["Core/echo", args, f"c{i}"])
    return {"using": [CORE], "methodCalls": methods}


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value of ``depth`` arrays inside one another around ``leaf``."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deepening(start: int, calls: int) -> dict[str, Any]:
    """An echo of a ``start``-deep value, then calls each wrapping the previous result
    one level deeper through a reference (the deep value comes from references, the
    request itself stays within the parser's bound)."""
    methods: list[list[Any]] = [["Core/echo", {"v": nested(start)}, "c0"]]
    for i in range(1, calls):
        methods.append(["Core/echo", {"#v": ref(f"c{i - 1}")}, f"c{i}"])
    return {"using": [CORE], "methodCalls": methods}
