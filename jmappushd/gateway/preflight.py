"""Gateway mode's checks of the file system, made before twistd runs the reactor.

The config parser checks values; what only the file system can say (is the notify socket's
path free or a stale socket, can the reader's password file be read) is checked here, from
``postOptions``, so a mistake stops twistd with one line naming the file, section and key,
before any port is bound. The same conditions are checked again where the files are used
(they may change in between); this is the early, readable refusal.
"""

from __future__ import annotations

from jmappushd.config import Config, ConfigError
from jmappushd.gateway.wiring import gateway_problems

__all__ = ["check_gateway"]


def check_gateway(config: Config) -> None:
    """Raise ConfigError for the first gateway file that cannot be used (standalone: none)."""
    problems = gateway_problems(config)
    if problems:
        raise ConfigError(problems[0])
