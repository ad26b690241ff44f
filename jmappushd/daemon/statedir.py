"""The state directory: created and checked before the reactor runs.

``prepare_state`` runs from ``tap.Options.postOptions``, so an unusable state
directory, token file or database stops twistd with one clear line instead of a
traceback after the ports are bound. ``check_state`` is its read-only twin for
``jmappushctl check-config``: the same refusals, found without creating anything.
Each reason names the config key, the path and the cause.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import stat
import tempfile
from pathlib import Path

from jmappushd.config import Config
from jmappushd.store.backends import prepare_store
from jmappushd.store.records import StoreError

STATE_DIR = "[server] state-dir"
ADMIN_FILE = "[admin] token-file"
STORAGE_PATH = "[storage] path"


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
    return read_admin_token(path)


def read_admin_token(path: str) -> str:
    """The token of an existing file, refused if others may read it or it is too short."""
    mode = Path(path).stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StateError(f"{path}: the admin token file must not be accessible to group or "
                         f"others (chmod 600 {path})")
    token = Path(path).read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise StateError(f"{path}: the admin token is missing or shorter than 16 characters")
    return token


def prepare_state(config: Config) -> None:
    """Create the state directory, the admin token and the store's schema, or raise
    StateError."""
    state_dir = config.server.state_dir
    _make_dir(state_dir, STATE_DIR, state_dir)
    token_file = config.admin.token_file
    _make_dir(os.path.dirname(token_file), ADMIN_FILE, token_file)
    try:
        load_or_create_admin_token(token_file)
    except StateError as exc:
        raise StateError(f"{ADMIN_FILE} {exc}") from exc
    except OSError as exc:
        raise StateError(f"{ADMIN_FILE} {token_file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise StateError(f"{ADMIN_FILE} {token_file}: not UTF-8 text") from exc
    if config.storage.backend != "sqlite":
        try:
            prepare_store(config.storage)  # its messages name their [storage] key
        except StoreError as exc:
            raise StateError(str(exc)) from exc
        return
    _make_dir(os.path.dirname(config.storage.path), STORAGE_PATH, config.storage.path)
    try:
        prepare_store(config.storage)
    except StoreError as exc:
        raise StateError(f"{STORAGE_PATH}: {exc}") from exc


def check_state(config: Config) -> list[str]:
    """Every reason ``prepare_state`` would refuse, without creating or changing anything.

    A directory that does not exist yet passes if it can be created (its nearest existing
    parent is a writable directory). Several keys sharing one bad directory give one line.
    """
    problems: list[str] = []
    seen: set[str] = set()
    sqlite = config.storage.backend == "sqlite"
    dirs = [(config.server.state_dir, STATE_DIR, config.server.state_dir),
            (os.path.dirname(config.admin.token_file), ADMIN_FILE, config.admin.token_file)]
    if sqlite:
        dirs.append((os.path.dirname(config.storage.path), STORAGE_PATH, config.storage.path))
    for directory, key, path in dirs:
        problem = _dir_problem(directory)
        if problem is not None and directory not in seen:
            seen.add(directory)
            problems.append(_where(key, path, directory, problem))
    token_file = config.admin.token_file
    if os.path.lexists(token_file):
        try:
            read_admin_token(token_file)
        except StateError as exc:
            problems.append(f"{ADMIN_FILE} {exc}")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{ADMIN_FILE} {token_file}: {_reason(exc)}")
    if sqlite:
        problems += _file_problems(config.storage.path, STORAGE_PATH)
    return problems


def _make_dir(directory: str, key: str, path: str) -> None:
    """Create ``directory`` (0700) and prove it writable, or raise StateError naming ``key``."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise StateError(_where(key, path, directory, "is not a directory")) from None
    except OSError as exc:
        failed = exc.filename or directory
        raise StateError(_where(key, path, directory,
                                f"cannot be created: {failed}: {_reason(exc)}")) from exc
    problem = _unwritable(directory)
    if problem is not None:
        raise StateError(_where(key, path, directory, f"is not writable: {problem}"))


def _where(key: str, path: str, directory: str, problem: str) -> str:
    """"[server] state-dir /x: problem", or "[storage] path /x/db: its directory /x problem"."""
    if os.path.normpath(directory) == os.path.normpath(path):
        return f"{key} {path}: {problem}"
    return f"{key} {path}: its directory {directory} {problem}"


def _dir_problem(directory: str) -> str | None:
    """Why ``directory`` cannot be used or created ("is not writable: ..."), or None."""
    if os.path.isdir(directory):
        problem = _unwritable(directory)
        return None if problem is None else f"is not writable: {problem}"
    if os.path.lexists(directory):
        return "is not a directory"
    parent = Path(directory).parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    problem = _unwritable(str(parent))
    return None if problem is None else f"cannot be created: {parent} is not writable: {problem}"


def _file_problems(path: str, key: str) -> list[str]:
    """An existing file must open for reading and writing (nothing is written)."""
    if not os.path.lexists(path):
        return []
    if os.path.isdir(path):
        return [f"{key} {path}: is a directory"]
    try:
        with open(path, "r+b"):
            pass
    except OSError as exc:
        return [f"{key} {path}: cannot open for writing: {_reason(exc)}"]
    return []


def _unwritable(directory: str) -> str | None:
    """Try to create a file: permission bits lie to root and on read-only mounts."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".jmappushd-check-")
    except OSError as exc:
        return _reason(exc)
    os.close(fd)
    os.unlink(name)
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(exc)


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
