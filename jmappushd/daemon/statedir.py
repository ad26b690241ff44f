"""The state directory: created and checked before the reactor runs.

``prepare_state`` runs from ``tap.Options.postOptions``, so an unusable state
directory, token file or database stops twistd with one clear line instead of a
traceback after the ports are bound.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import stat
from pathlib import Path

from jmappushd.config import Config
from jmappushd.store.backends import prepare_store
from jmappushd.store.records import StoreError


class StateError(Exception):
    """The state directory, token file or database cannot be used."""


def load_or_create_admin_token(path: str) -> str:
    """Read the admin token; create it (0600, 256 random bits) on first start."""
    token_path = Path(path)
    if not token_path.exists():
        token_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        return token
    mode = token_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StateError(f"{path}: the admin token file must not be accessible to group or "
                         f"others (chmod 600 {path})")
    token = token_path.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise StateError(f"{path}: the admin token is missing or shorter than 16 characters")
    return token


def prepare_state(config: Config) -> None:
    """Create the state directory, the admin token and the store's schema, or raise
    StateError."""
    try:
        Path(config.server.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        load_or_create_admin_token(config.admin.token_file)
    except OSError as exc:
        raise StateError(f"{exc.filename}: {exc.strerror}") from exc
    try:
        prepare_store(config.storage)
    except StoreError as exc:
        raise StateError(str(exc)) from exc


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    """Set the soft RLIMIT_NOFILE to ``wanted`` (at most the hard limit), or raise it to
    the hard limit when ``wanted`` is 0."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    if wanted <= 0:
        target = max(soft, 1 << 20) if unlimited else hard
    else:
        target = wanted if unlimited else min(wanted, hard)
    if target != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
