"""Headless Chromium for the tests that need a real browser (CORS, the demo page).

Playwright drives the Debian Chromium at :data:`CHROMIUM` (never a downloaded one:
``playwright install`` is not used), headless, with a fresh profile per browser
context. Without Chromium or Playwright the test is skipped with the reason, except
under ``CI=true``, where it fails: CI installs both.

:class:`OriginServer` serves a page from another port of 127.0.0.1, which is another
origin for the browser (scheme, host and port), so the page's requests to the daemon
are cross-origin.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.daemon_process import DaemonProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 15_000


def require_browser() -> None:
    """Skip (fail under CI=true) when Chromium or Playwright is missing."""
    reason = None
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (pip install playwright)"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium; each ``new_context()`` is a fresh in-memory profile."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class _PageHandler(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output is enough


class OriginServer:
    """An HTTP server on 127.0.0.1 (its own port, so its own origin) serving one page."""

    def __init__(self, page: str = "<!DOCTYPE html><title>client</title><p>client</p>"
                 ) -> None:
        handler = type("Handler", (_PageHandler,), {"page": page.encode("utf-8")})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self._server.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OriginServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def admin_publish(d: DaemonProcess, changed: dict[str, dict[str, str]]) -> None:
    """POST /publish on the daemon's admin listener, blocking (tests here are synchronous)."""
    token = (d.tmp_path / "state" / "admin.token").read_text().strip()
    body = json.dumps({"@type": "StateChange", "changed": changed}).encode()
    request = urllib.request.Request(d.admin + "/publish", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def started_daemon(tmp_path: Path, server: str, user: str, password: str,
                   account_id: str, sections: dict[str, str] | None = None) -> DaemonProcess:
    """``twistd -n jmappushd`` with one user, ready; ``server`` adds ``[server]`` keys."""
    d = DaemonProcess(tmp_path, sections=sections or {})
    text = d.config_path.read_text()
    d.config_path.write_text(text.replace("[server]\n", f"[server]\n{server}\n", 1))
    d.ctl("user", "add", user, "--password-stdin", "--account-id", account_id,
          stdin=password + "\n")
    d.start()
    return d
