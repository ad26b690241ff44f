"""The demo page's scenario in a real browser, shared by its test and the screenshot.

``python -m tests.demo_flow docs/demo.png`` starts a daemon with the page on, runs the
scenario in headless Chromium and saves the screenshot the README shows.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tests.browser import TIMEOUT_MS, admin_publish, chromium, started_daemon
from tests.daemon_process import DaemonProcess

if TYPE_CHECKING:
    from playwright.sync_api import Page

ACCOUNT = "demo-account"
MISSED_STATE = "missed-while-away"


def run_demo(page: Page, d: DaemonProcess, account: str = ACCOUNT,
             screenshot: Path | None = None) -> None:
    """Log in, publish, see it in both panes; reload and resume; miss a change, get it."""
    from playwright.sync_api import expect

    es_log, ws_log = page.locator("#es-log"), page.locator("#ws-log")
    page.goto(d.base + "/demo/")
    expect(page.locator("#username")).to_have_value("demo")
    expect(page.locator("#password")).to_have_value("demo")
    page.click("#login")
    expect(page.locator("#session")).to_contain_text('"username": "demo"', timeout=TIMEOUT_MS)
    expect(page.locator("#es-state")).to_contain_text("open", timeout=TIMEOUT_MS)
    expect(page.locator("#ws-state")).to_contain_text("open", timeout=TIMEOUT_MS)

    state = publish(page, "Email")
    expect(es_log).to_contain_text(f'{{"{account}":{{"Email":"{state}"}}}}', timeout=TIMEOUT_MS)
    expect(ws_log).to_contain_text(f'{{"{account}":{{"Email":"{state}"}}}}', timeout=TIMEOUT_MS)
    es_id = page.locator("#es-last").text_content()
    ws_state = page.locator("#ws-last").text_content()
    assert es_id and ws_state and "nothing" not in es_id + ws_state

    # A reload keeps the login and resumes both channels from the ids kept in the tab.
    page.reload()
    expect(es_log).to_contain_text(f"resuming from {es_id}", timeout=TIMEOUT_MS)
    expect(ws_log).to_contain_text(f"resuming from {ws_state}", timeout=TIMEOUT_MS)

    # A change published while no page listens arrives as soon as the page is back.
    page.goto("about:blank")
    admin_publish(d, {account: {"Mailbox": MISSED_STATE}})
    page.goto(d.base + "/demo/")
    expect(es_log).to_contain_text(MISSED_STATE, timeout=TIMEOUT_MS)
    expect(ws_log).to_contain_text(MISSED_STATE, timeout=TIMEOUT_MS)
    if screenshot is not None:
        state = publish(page, "Thread")
        expect(es_log).to_contain_text(state, timeout=TIMEOUT_MS)
        expect(ws_log).to_contain_text(state, timeout=TIMEOUT_MS)
        page.screenshot(path=str(screenshot), full_page=True)


def publish(page: Page, type_name: str) -> str:
    """Press the button; the new state string the page reports."""
    from playwright.sync_api import expect

    page.select_option("#type", type_name)
    page.click("#publish")
    status = page.locator("#publish-status")
    expect(status).to_contain_text(f"published {type_name} = demo-", timeout=TIMEOUT_MS)
    text = status.text_content() or ""
    return text.split(" = ", 1)[1].split()[0]


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "docs/demo.png").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        d = started_daemon(Path(tmp), "demo-page = true", "demo", "demo", ACCOUNT)
        try:
            with chromium() as browser:
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                run_demo(context.new_page(), d, screenshot=target)
        finally:
            d.stop()
    print(f"saved {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
