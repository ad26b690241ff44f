"""The ``reuseport:`` endpoint type (jmappushd.net.reuseport), found by serverFromString.

Kept tiny: Twisted imports every plugin module of this folder when it meets an endpoint
type it does not know, so the implementation is imported only when one is parsed.
"""

from twisted.internet.interfaces import (
    IReactorCore,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """``reuseport:tcp:8080:interface=0.0.0.0``: the wrapped endpoint with SO_REUSEPORT."""

    prefix = "reuseport"

    def parseStreamServer(self, reactor: IReactorCore, *args: object, **kwargs: object
                          ) -> IStreamServerEndpoint:
        from jmappushd.net.reuseport import parse

        # Twisted's string grammar hands over text only.
        return parse(reactor, [str(a) for a in args], {k: str(v) for k, v in kwargs.items()})


reuseport = ReusePortParser()
