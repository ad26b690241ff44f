"""The demo page in headless Chromium against ``twistd -n jmappushd`` with demo-page on."""

from __future__ import annotations

from pathlib import Path

from tests.browser import chromium, require_browser, started_daemon
from tests.demo_flow import ACCOUNT, run_demo


def test_demo_page_logs_in_publishes_and_resumes(tmp_path: Path) -> None:
    """Log in as demo/demo (prefilled), see the session, press publish and see the change
    arrive over EventSource and WebSocket; after a reload both resume from their stored
    ids, and a change published while the page was away arrives when it comes back."""
    require_browser()
    d = started_daemon(tmp_path, "demo-page = true", "demo", "demo", ACCOUNT)
    try:
        with chromium() as browser:
            run_demo(browser.new_context().new_page(), d)
    finally:
        d.stop()
    assert "demo page at /demo/" in d.log()
