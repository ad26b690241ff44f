"""The live demo page at ``/demo/`` (``[server] demo-page``, for development).

Plain HTML, CSS and JavaScript shipped as package data (``demo_static/``) and read
once when the daemon is built; no build step and nothing from another site. The
page logs in (:class:`~jmappushd.web.demo_api.DemoLoginResource`), shows the
session, watches StateChanges over EventSource and over WebSocket side by side,
publishes changes (:class:`~jmappushd.web.demo_api.DemoPublishResource`) and, after
a reload, resumes both from the ids it kept in ``sessionStorage``.
:class:`DemoService` owns the page's tokens: the ones a previous run left behind
are revoked at start, the live ones at stop.
"""

from __future__ import annotations

from importlib import resources

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from zope.interface import implementer

from jmappushd.context import App
from jmappushd.core.signal import StartSignal
from jmappushd.transports.interface import IStarted, ITransportService
from jmappushd.web.demo_api import DemoLoginResource, DemoPublishResource
from jmappushd.web.demo_tokens import DemoTokens
from jmappushd.web.discovery import NotFoundResource

STATIC_FILES = {
    b"index.html": b"text/html; charset=utf-8",
    b"demo.js": b"text/javascript; charset=utf-8",
    b"demo.css": b"text/css; charset=utf-8",
}
#: The page runs only its own files and talks only to this daemon (the WebSocket URL
#: comes from the session, hence ws: and wss:).
CONTENT_SECURITY_POLICY = (b"default-src 'self'; connect-src 'self' ws: wss:; "
                           b"img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                           b"frame-ancestors 'none'")


def read_static(name: bytes) -> bytes:
    """One file of the page, from the installed package."""
    folder = resources.files("jmappushd.web") / "demo_static"
    return (folder / name.decode("ascii")).read_bytes()


class StaticFile(Resource):
    """One of the page's files, served from memory, never cached (it is a dev tool)."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self._body = body
        self._type = content_type

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", self._type)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        return self._body

    render_HEAD = render_GET


class DemoDirectory(Resource):
    """``/demo/``: the page, its files and its two endpoints; a JSON 404 otherwise."""

    def __init__(self, children: dict[bytes, IResource]) -> None:
        super().__init__()
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            index: IResource = self.children[b"index.html"]
            return index
        return NotFoundResource()

    def render_GET(self, request: Request) -> bytes:
        # "/demo" without the slash: the page's relative URLs need it.
        request.setResponseCode(301)
        request.setHeader(b"Location", b"/demo/")
        return b""


@implementer(ITransportService)
class DemoService(Service):
    """The demo page as a part of the daemon: its resource tree and its tokens."""

    name = "demo"
    log = Logger()

    def __init__(self, app: App, clock: IReactorTime, core: IStarted) -> None:
        self._core = core
        self._signal = StartSignal()
        self.tokens = DemoTokens(app.store, clock)
        children: dict[bytes, IResource] = {
            name: StaticFile(read_static(name), kind) for name, kind in STATIC_FILES.items()}
        children[b"login"] = DemoLoginResource(app, clock, self.tokens)
        children[b"publish"] = DemoPublishResource(app, clock)
        self.resource = DemoDirectory(children)
        if not app.config.auth.allow_access_token:
            self.log.warn("[server] demo-page is on but [auth] allow-access-token-query is "
                          "off: the page's EventSource and WebSocket cannot log in")

    def startService(self) -> None:
        super().startService()
        defer.ensureDeferred(self._start()).addBoth(self._signal.fire)

    async def _start(self) -> None:
        await self._core.when_started()
        revoked = await self.tokens.revoke_left_over()
        self.log.warn("demo page at /demo/ (development only: any user who can log in may "
                      "publish changes to their own account); {revoked} old demo tokens revoked",
                      revoked=revoked)

    def when_started(self) -> defer.Deferred[None]:
        """Fires once a previous run's tokens are revoked (after the core opened the store)."""
        return self._signal.wait()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self.tokens.revoke_all())
