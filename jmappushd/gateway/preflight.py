"""Gateway mode's checks of the file system, made before twistd runs the reactor.

The config parser checks values; what only the file system can say (is the notify socket's
path free or a stale socket, can the reader's password file be read) is checked here, from
``postOptions``, so a mistake stops twistd with one line naming the file, section and key,
before any port is bound. The same conditions are checked again where the files are used
(they may change in between); this is the early, readable refusal.
"""

from __future__ import annotations

from jmappushd.config import Config, ConfigError
from jmappushd.gateway.cyrus_notify import socket_path_problem
from jmappushd.gateway.wiring import read_reader_password

__all__ = ["check_gateway"]


def check_gateway(config: Config) -> None:
    """Raise ConfigError for the first gateway file that cannot be used (standalone: none)."""
    upstream = config.upstream
    if not upstream.enabled:
        return
    if upstream.changes == "cyrus-notify":
        problem = socket_path_problem(upstream.notify_socket)
        if problem is not None:
            raise ConfigError(f"{config.path}: [upstream] notify-socket: {problem}")
    if upstream.reader_user:
        read_reader_password(upstream, config.path)
