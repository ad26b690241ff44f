"""twistd entry point: ``twistd -n jmappushd --config FILE``.

Only this module touches the global reactor. Every start-up failure leaves twistd as one
line, ``jmappushd: error: <cause>``, with a non-zero exit status: a config or state
directory mistake from ``postOptions`` and a port that cannot be bound from
``makeService``, both before twistd starts logging (so neither its usage block nor its
"starting up" lines nor a traceback bury the cause).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, cast

from twisted.application.service import IService
from twisted.python import usage

from jmappushd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from jmappushd.daemon.gcpolicy import GCPolicy
from jmappushd.daemon.listeners import ListenError, ListenerService
from jmappushd.daemon.service import StateError, build_service, prepare_state
from jmappushd.gateway.preflight import check_gateway
from jmappushd.reactor import IDaemonReactor


class StartupRefused(SystemExit):
    """The daemon cannot start; Python prints the one line and exits with status 1.

    A ``UsageError`` would make twistd print its usage block first, and any other
    exception a traceback, so the reason travels as the SystemExit message instead.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"jmappushd: error: {reason}")
        self.reason = reason


class Options(usage.Options):
    """Command-line options of the ``jmappushd`` twistd plugin."""

    synopsis = "[-c FILE]"
    longdesc = "Run the JMAP push daemon (EventSource, WebSocket and Web Push)."
    optParameters = [
        ["config", "c", DEFAULT_CONFIG_PATH, "Path to the INI configuration file."],
    ]

    def postOptions(self) -> None:
        try:
            self.config = load_config(self["config"])
            check_gateway(self.config)
            prepare_state(self.config)
        except (ConfigError, StateError) as exc:
            raise StartupRefused(str(exc)) from None


def exit_non_zero_at_exit() -> None:
    """twistd exits 0 whenever its reactor stops; a start-up that failed after the reactor
    ran must exit 1 (systemd's Restart=on-failure, scripts): once twistd has returned and
    the interpreter exits, exit with 1 instead."""

    def exit_one() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    atexit.register(exit_one)


def makeService(options: Any) -> IService:
    """The daemon with its ports already bound, or StartupRefused naming the one that is not.

    Binding here, before twistd forks, logs or drops privileges, is what makes a port in
    use the only line printed; twistd's own ``privilegedStartService`` later finds the
    listeners bound and leaves them.
    """
    from twisted.internet import reactor

    # The one place the global reactor is used; it provides every interface of the union.
    service = build_service(options.config, cast(IDaemonReactor, reactor))
    service.on_start_failure = exit_non_zero_at_exit
    service.use_gc_policy(GCPolicy(options.config.server.gc_threshold))
    try:
        service.privilegedStartService()
    except ListenError as exc:
        for child in service:
            if isinstance(child, ListenerService):
                child.stopService()  # those bound before the failing one
        raise StartupRefused(str(exc)) from None
    return service
