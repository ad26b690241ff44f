"""``[server] cors-origins`` and its deprecated alias ``[event-source] cors-origins``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from jmappushd.config import ConfigError, parse_config
from jmappushd.ctl import run
from tests.support import log_into, make_config, start_daemon, stop_daemon

PATH = "/etc/jmappushd/cors.ini"
DEPRECATED = (f"{PATH}: [event-source] cors-origins is deprecated: use [server] cors-origins "
              "(it now applies to every JMAP endpoint: session, API and EventSource)")


def test_server_key_applies_without_warning() -> None:
    """The new key is read as given and warns about nothing."""
    config = parse_config("[server]\ncors-origins = https://App.example.com\n", PATH, {})
    assert config.server.cors_origins == ("https://app.example.com",)
    assert config.warnings == ()


def test_old_key_still_works_with_one_deprecation_line() -> None:
    """[event-source] cors-origins alone becomes [server] cors-origins, with one warning
    naming file, section, key and the replacement."""
    config = parse_config("[event-source]\ncors-origins = https://a.example, *\n", PATH, {})
    assert config.server.cors_origins == ("https://a.example", "*")
    assert config.warnings == (DEPRECATED,)


def test_both_keys_with_the_same_origins_are_accepted() -> None:
    """The same origins in both places (in any order) are not a conflict; still deprecated."""
    config = parse_config("[server]\ncors-origins = https://b.example https://a.example\n"
                          "[event-source]\ncors-origins = https://a.example, https://b.example\n",
                          PATH, {})
    assert set(config.server.cors_origins) == {"https://a.example", "https://b.example"}
    assert config.warnings == (DEPRECATED,)


@pytest.mark.parametrize("server", ["https://b.example", ""])
def test_both_keys_differing_is_an_error_naming_both(server: str) -> None:
    """Different origins in the two keys (an explicitly empty new key included) are a
    config error naming both keys."""
    text = f"[server]\ncors-origins = {server}\n[event-source]\ncors-origins = https://a.example\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH, {})
    message = str(info.value)
    assert message.startswith(f"{PATH}: [event-source] cors-origins (https://a.example) and "
                              f"[server] cors-origins ({server or 'empty'}) differ")
    assert "\n" not in message


def test_check_config_prints_the_deprecation(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """jmappushctl check-config says OK and prints the deprecation line on stderr."""
    path = tmp_path / "old.ini"
    path.write_text(f"[server]\nstate-dir = {tmp_path}\n"
                    "[event-source]\ncors-origins = https://a.example\n")
    out = io.StringIO()
    run(["-c", str(path), "check-config"], out, io.StringIO())
    assert out.getvalue() == f"{path}: OK\n"
    err = capsys.readouterr().err.splitlines()
    assert err == [f"jmappushctl: warning: {path}: [event-source] cors-origins is deprecated: "
                   "use [server] cors-origins (it now applies to every JMAP endpoint: session, "
                   "API and EventSource)"]


@pytest_twisted.ensureDeferred
async def test_daemon_logs_the_deprecation_at_start(tmp_path: Path) -> None:
    """The daemon logs the same line as a warning when it starts."""
    config = make_config(tmp_path, sections={"event-source": "cors-origins = https://a.example"})
    events: list[dict[str, Any]] = []
    observer = log_into(events)
    globalLogPublisher.addObserver(observer)
    try:
        daemon = await start_daemon(config)
        await stop_daemon(daemon)
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = [formatEvent(e) for e in events if "deprecated" in (formatEvent(e) or "")]
    assert lines == [config.warnings[0]]
    assert "[event-source] cors-origins is deprecated" in lines[0]
