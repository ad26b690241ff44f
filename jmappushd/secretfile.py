"""A secret kept in a file of its own: one line, readable by its owner only.

Used for every password the configuration names by file (``[storage] password-file``,
``[upstream] reader-password-file``), so no secret sits in the INI file and a file that
others can read is refused rather than trusted.
"""

from __future__ import annotations

import os
import stat


def read_secret_line(path: str) -> str:
    """The file's one line; ValueError with a short reason otherwise (callers add where)."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ValueError(f"{path} must not be readable by group or others "
                         f"(mode {mode:04o}; chmod 0600)")
    lines = text.splitlines()
    if len(lines) != 1 or not lines[0]:
        raise ValueError(f"{path} must hold the password on one line")
    return lines[0]
