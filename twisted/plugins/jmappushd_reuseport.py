"""The ``reuseport:`` endpoint type (jmappushd.net.reuseport), found by serverFromString.

Kept tiny: Twisted imports every plugin module of this folder when it meets an endpoint
type it does not know, so the implementation is imported only when one is parsed.
"""

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """``reuseport:tcp:8080:interface=0.0.0.0``: the wrapped endpoint with SO_REUSEPORT."""

    prefix = "reuseport"

    def parseStreamServer(self, reactor: Any, *args: str, **kwargs: str
                          ) -> IStreamServerEndpoint:
        from jmappushd.net.reuseport import parse

        return parse(reactor, args, kwargs)


reuseport = ReusePortParser()
