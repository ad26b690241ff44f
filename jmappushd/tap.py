"""twistd entry point: ``twistd -n jmappushd --config FILE``.

Only this module touches the global reactor.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.service import IService
from twisted.python import usage

from jmappushd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from jmappushd.daemon.service import StateError, build_service, prepare_state
from jmappushd.gateway.preflight import check_gateway
from jmappushd.reactor import IDaemonReactor


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
            raise usage.UsageError(str(exc)) from exc


def makeService(options: Any) -> IService:
    from twisted.internet import reactor

    # The one place the global reactor is used; it provides every interface of the union.
    return build_service(options.config, cast(IDaemonReactor, reactor))
