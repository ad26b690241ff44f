"""Which jmappushd and which libraries are running: for the start-up log and ``/health``.

Installed distribution metadata is the truth (a wheel's version, not a source tree's
guess); a module's own ``__version__`` is the fallback when the metadata is missing
(run from a source tree that was never installed).
"""

from __future__ import annotations

import importlib
import platform
from importlib import metadata

from jmappushd import __version__

# Distribution name -> the module whose __version__ is the fallback.
LIBRARIES = {"Twisted": "twisted", "autobahn": "autobahn", "cryptography": "cryptography"}


def distribution_version(distribution: str, module: str) -> str:
    """The installed version of ``distribution``, else ``module.__version__``, else "unknown"."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        pass
    try:
        found = getattr(importlib.import_module(module), "__version__", None)
    except ImportError:
        found = None
    return str(found) if found else "unknown"


def daemon_version() -> str:
    """jmappushd's own version."""
    try:
        return metadata.version("jmappushd")
    except metadata.PackageNotFoundError:
        return __version__


def library_versions() -> dict[str, str]:
    """Twisted, Autobahn and cryptography, by distribution name, plus Python."""
    found = {name: distribution_version(name, module) for name, module in LIBRARIES.items()}
    found["Python"] = platform.python_version()
    return found
