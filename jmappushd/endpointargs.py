"""The arguments of a Twisted endpoint string, split the way ``serverFromString`` splits them.

The config check needs the file names of ``ssl:`` endpoints and ``jmappushctl`` the port of
the admin listener, both also inside a ``reuseport:`` endpoint (which wraps another one and
passes it on, re-escaped); Twisted keeps its parser private, so this is the same small grammar:
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


def endpoint_description(args: list[str], kwargs: dict[str, str]) -> str:
    """The inverse of :func:`endpoint_arguments`: ``(["tcp", "80"], {"interface": "::1"})``
    → ``"tcp:80:interface=\\:\\:1"``, escaped so that Twisted splits it back the same way."""
    parts = [_escape(a) for a in args]
    parts += [f"{_escape(k)}={_escape(v)}" for k, v in kwargs.items()]
    return ":".join(parts)


REUSEPORT = "reuseport"
"""The prefix of :mod:`jmappushd.net.reuseport`'s endpoints, which wrap another one."""


def unwrap(description: str) -> str:
    """The endpoint a ``reuseport:`` endpoint wraps (``reuseport:tcp:80`` → ``tcp:80``);
    any other description unchanged."""
    args, kwargs = endpoint_arguments(description)
    if args[0] != REUSEPORT:
        return description
    return endpoint_description(args[1:], kwargs)


def _escape(text: str) -> str:
    return "".join("\\" + c if c in ":=\\" else c for c in text)
