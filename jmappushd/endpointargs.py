"""The arguments of a Twisted endpoint string, split the way ``serverFromString`` splits them.

The config check needs the file names of ``ssl:`` endpoints and ``jmappushctl`` the port of
the admin listener; Twisted keeps its parser private, so this is the same small grammar:
``:`` separates arguments, the first ``=`` in one makes it a keyword argument, and a
backslash escapes the next character (``interface=\\:\\:1``).
"""

from __future__ import annotations


def endpoint_arguments(description: str) -> tuple[list[str], dict[str, str]]:
    """``"ssl:443:privateKey=k.pem"`` → ``(["ssl", "443"], {"privateKey": "k.pem"})``."""
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for segment in _segments(description):
        if len(segment) == 1:
            args.append(segment[0])
        else:
            kwargs[segment[0]] = segment[1]
    return args, kwargs


def _segments(description: str) -> list[list[str]]:
    segments: list[list[str]] = [[""]]
    chars = iter(description)
    for char in chars:
        current = segments[-1]
        if char == ":":
            segments.append([""])
        elif char == "=" and len(current) == 1:
            current.append("")
        elif char == "\\":
            current[-1] += next(chars, "")
        else:
            current[-1] += char
    return segments
