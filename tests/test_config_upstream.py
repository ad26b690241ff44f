"""[upstream]: gateway mode's keys, their defaults and the ones that only make sense together."""

from __future__ import annotations

import pytest

from jmappushd.config import Config, ConfigError, parse_config

PATH = "/etc/jmappushd/test.ini"


def parse(text: str) -> Config:
    return parse_config(text, PATH, environ={})


def rejection(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


def test_standalone_by_default() -> None:
    upstream = parse("").upstream
    assert not upstream.enabled
    assert (upstream.changes, upstream.poll_interval, upstream.debounce, upstream.timeout,
            upstream.max_connections) == ("publish", 30.0, 200, 10_000, 32)


def test_gateway_with_cyrus_notify() -> None:
    upstream = parse("[upstream]\nsession-url = http://127.0.0.1:8008/jmap/\n"
                     "changes = cyrus-notify\nnotify-socket = run/notify.sock\n"
                     "reader-user = reader\nreader-password-file = reader.pw\n").upstream
    assert upstream.enabled and upstream.changes == "cyrus-notify"
    assert upstream.notify_socket == "/etc/jmappushd/run/notify.sock"  # relative to the file
    assert upstream.reader_password_file == "/etc/jmappushd/reader.pw"
    assert upstream.timeout_s == 10.0 and upstream.debounce_s == 0.2


@pytest.mark.parametrize(("text", "message"), [
    ("session-url = ftp://x/\n", "[upstream] session-url: not an absolute http(s) URL"),
    ("session-url = http://u:p@mail/jmap\n", "[upstream] session-url: must not contain"),
    ("session-url = http://mail:99999/\n", "[upstream] session-url: bad port"),
    ("session-url = http://mail/\nchanges = imap-idle\n", "[upstream] changes: must be one of"),
    ("changes = poll\n", "[upstream] changes: needs session-url"),
    ("reader-user = r\n", "[upstream] reader-user: needs session-url"),
    ("session-url = http://mail/\nchanges = cyrus-notify\nreader-user = r\n"
     "reader-password-file = p\n", "[upstream] notify-socket: required with changes = cyrus"),
    ("session-url = http://mail/\nchanges = poll\n", "[upstream] reader-user: required"),
    ("session-url = http://mail/\nreader-user = r\n", "reader-user and reader-password-file"),
    ("session-url = http://mail/\npoll-interval = 0.5\n", "[upstream] poll-interval: must be"),
    ("session-url = http://mail/\ntimeout = 0\n", "[upstream] timeout: must be at least 1"),
    ("session-url = http://mail/\nmax-connections = 0\n", "[upstream] max-connections: must"),
])
def test_bad_values_name_file_section_and_key(text: str, message: str) -> None:
    got = rejection("[upstream]\n" + text)
    assert got.startswith(f"{PATH}: ") and message in got, got
    assert "\n" not in got


def test_empty_optional_paths_mean_unset() -> None:
    """``ca-file =`` (as the sample shows it, uncommented) is the default, not an error."""
    upstream = parse("[upstream]\nsession-url = https://mail/\nca-file =\n").upstream
    assert upstream.ca_file == ""
    assert "[storage] path: must not be empty" in rejection("[storage]\npath =\n")
