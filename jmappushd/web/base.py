"""The common shape of our leaf resources: they hold the App and answer asynchronously."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.resource import Resource

from jmappushd.app import App


class AppResource(Resource):
    """A leaf resource with access to the daemon's shared objects."""

    isLeaf = True
    log = Logger()

    def __init__(self, app: App) -> None:
        super().__init__()
        self._app = app
