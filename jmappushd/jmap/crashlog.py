"""A short, bounded account of an unexpected exception, for one log line.

A full traceback per failed method call let one small request write hundreds of
kilobytes of log (issue 11): a client can make the same bug fail in every call, and
an exception's message may repeat client data. :func:`summarise` keeps what an
operator needs to find the bug (type, the start of the message, the innermost frames)
within :data:`MAX_SUMMARY` characters.
"""

from __future__ import annotations

import traceback

MAX_SUMMARY = 1000
"""Characters a summary may have, whatever the exception carries."""

_MESSAGE = 200
_FRAMES = 3


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarise(exc: BaseException) -> str:
    """``Type: message at file:line in function < …`` (innermost frame first), bounded."""
    frames = traceback.extract_tb(exc.__traceback__)[-_FRAMES:]
    where = " < ".join(f"{'/'.join(f.filename.split('/')[-2:])}:{f.lineno} in {f.name}"
                       for f in reversed(frames))
    try:
        message = str(exc)
    except Exception:
        message = "(unprintable)"
    text = f"{type(exc).__qualname__}: {_clip(message, _MESSAGE)}"
    if where:
        text += f" at {where}"
    return _clip(text, MAX_SUMMARY)
