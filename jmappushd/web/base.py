"""The common shape of our leaf resources: they hold the App and answer asynchronously."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from jmappushd.auth.authenticator import Principal
from jmappushd.context import App
from jmappushd.web.httpauth import authenticate


class AppResource(Resource):
    """A leaf resource with access to the daemon's shared objects."""

    isLeaf = True
    log = Logger()

    def __init__(self, app: App) -> None:
        super().__init__()
        self._app = app

    async def authenticated(self, request: Request, endpoint: str) -> Principal | None:
        """The request's Principal, or None once a 401, 429 or 503 has been answered and counted."""
        app = self._app
        principal = await authenticate(app, request)
        if principal is None:
            app.metrics.http_requests.labels(endpoint, str(request.code)).inc()
        return principal
