"""Tests for jmappushd.config: defaults, every key's parsing, each rejection, the sample files."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest

from jmappushd import config as cfg
from jmappushd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    load_config,
    parse_config,
)

ETC = Path(__file__).resolve().parent.parent / "etc"
SAMPLE = ETC / "jmappushd.ini"
DEV = ETC / "dev.ini"
PATH = "/etc/jmappushd/test.ini"

# The published interface's defaults, written out by hand so that a changed default fails here.
PUBLISHED_DEFAULTS = {
    ("push", "push-max-total"): 100,
    ("push", "push-attempts-max"): 3,
    ("push", "push-attempt-interval"): 60000,
    ("push", "push-retry-interval"): 1000,
    ("push", "push-timeout"): 10000,
    ("push", "push-verify-timeout"): 60000,
    ("push", "push-throttle"): 1000,
    ("event-source", "event-source-throttle"): 1000,
    ("websocket", "ws-client-timeout"): 10,
    ("websocket", "ws-heartbeat-interval"): 5,
    ("websocket", "ws-throttle"): 1000,
}

# RFC 8620 §2 suggested minimums for the limits this daemon advertises (SES-7).
RFC_MINIMUMS = {
    "max_size_request": 10_000_000,
    "max_concurrent_requests": 4,
    "max_calls_in_request": 16,
    "max_objects_in_get": 500,
    "max_objects_in_set": 500,
}


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(text, PATH, environ={} if environ is None else environ)


def field_value(config: Config, section: str, key: str) -> Any:
    attr, cls = cfg.SECTIONS[section]
    names = {cfg.ini_key(cls, f.name): f.name for f in dataclasses.fields(cls)}
    return getattr(getattr(config, attr), names[key])


def all_keys() -> list[tuple[str, str]]:
    return [
        (section, cfg.ini_key(cls, f.name))
        for section, (_attr, cls) in cfg.SECTIONS.items()
        for f in dataclasses.fields(cls)
    ]


def rejection(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults ---------------------------------------------------------------------------------


def test_empty_file_gives_published_defaults() -> None:
    """An empty file yields the defaults of the published interface."""
    config = parse("")
    for (section, key), expected in PUBLISHED_DEFAULTS.items():
        assert field_value(config, section, key) == expected, (section, key)
    assert config.server.listen == ("tcp:8080:interface=127.0.0.1",)
    assert config.server.public_url == "http://127.0.0.1:8080"
    assert config.server.max_open_files == 0
    assert config.admin.listen == ("tcp:8081:interface=127.0.0.1",)
    assert config.auth == cfg.AuthConfig(cache_ttl=60.0, allow_access_token=True, realm="jmappushd")
    assert config.push.allow_private_urls is False
    assert config.push.expires_max == 604800
    assert config.push.failing_give_up == 86400
    assert config.push.create_rate == 10
    assert config.push.ttl == 86400
    assert config.push.urgency == "normal"
    assert config.push.vapid_subject == ""
    assert config.push.require_keys is False
    assert (config.event_source.ping_min, config.event_source.ping_max) == (30, 300)
    assert config.event_source.cors_origins == ()
    assert config.event_source.max_connections_per_user == 100
    assert config.websocket.max_connections_per_user == 100
    assert config.websocket.allowed_origins == ()
    assert config.log.access_log is True
    assert config.path == PATH


def test_default_jmap_limits_meet_rfc_minimums() -> None:
    """SES-7: the default core limits are at least RFC 8620's suggested minimums."""
    jmap = parse("").jmap
    for name, minimum in RFC_MINIMUMS.items():
        assert getattr(jmap, name) >= minimum, name


def test_dataclass_defaults_equal_parsed_defaults() -> None:
    """Config() built directly equals an empty file parsed without STATE_DIRECTORY."""
    assert dataclasses.replace(parse(""), path="") == Config()


def test_default_config_path() -> None:
    """The default config path is the one the systemd unit passes."""
    assert DEFAULT_CONFIG_PATH == "/etc/jmappushd/jmappushd.ini"


def test_config_is_frozen() -> None:
    """Config and its sections cannot be modified after parsing."""
    config = parse("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.push.push_timeout = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.log = cfg.LogConfig()  # type: ignore[misc]


def test_millisecond_keys_have_seconds_helpers() -> None:
    """Every ms key has a *_s property giving the same duration in seconds."""
    config = parse(
        "[push]\npush-attempt-interval = 1500\npush-retry-interval = 250\npush-timeout = 2\n"
        "push-verify-timeout = 30000\npush-throttle = 0\n"
        "[event-source]\nevent-source-throttle = 1234\n[websocket]\nws-throttle = 10\n"
    )
    assert config.push.push_attempt_interval_s == 1.5
    assert config.push.push_retry_interval_s == 0.25
    assert config.push.push_timeout_s == 0.002
    assert config.push.push_verify_timeout_s == 30.0
    assert config.push.push_throttle_s == 0.0
    assert config.event_source.event_source_throttle_s == 1.234
    assert config.websocket.ws_throttle_s == 0.01


# --- paths and STATE_DIRECTORY ----------------------------------------------------------------


def test_state_dir_defaults_to_var_lib_and_derives_files() -> None:
    """Without STATE_DIRECTORY, state lives in /var/lib/jmappushd with token and db inside."""
    config = parse("")
    assert config.server.state_dir == "/var/lib/jmappushd"
    assert config.admin.token_file == "/var/lib/jmappushd/admin.token"
    assert config.storage.path == "/var/lib/jmappushd/jmappushd.sqlite3"


def test_state_directory_environment_is_the_default() -> None:
    """systemd's STATE_DIRECTORY (first entry if several) is the default state-dir."""
    config = parse("", environ={"STATE_DIRECTORY": "/srv/state:/srv/other"})
    assert config.server.state_dir == "/srv/state"
    assert config.admin.token_file == "/srv/state/admin.token"
    assert config.storage.path == "/srv/state/jmappushd.sqlite3"


def test_explicit_state_dir_beats_environment() -> None:
    """A state-dir key wins over STATE_DIRECTORY, and the derived files follow it."""
    config = parse("[server]\nstate-dir = /data\n", environ={"STATE_DIRECTORY": "/srv/state"})
    assert config.server.state_dir == "/data"
    assert config.storage.path == "/data/jmappushd.sqlite3"


def test_relative_paths_resolve_against_config_directory() -> None:
    """Relative state-dir, token-file and path are anchored at the config file's directory."""
    config = parse(
        "[server]\nstate-dir = ../var\n[admin]\ntoken-file = secret/token\n"
        "[storage]\npath = db.sqlite3\n"
    )
    assert config.server.state_dir == "/etc/var"
    assert config.admin.token_file == "/etc/jmappushd/secret/token"
    assert config.storage.path == "/etc/jmappushd/db.sqlite3"


def test_environ_none_reads_os_environ_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """With environ=None the process environment is read when parsing, not at import."""
    monkeypatch.setenv("STATE_DIRECTORY", "/run/late")
    assert parse_config("", PATH).server.state_dir == "/run/late"
    assert parse("").server.state_dir == "/var/lib/jmappushd"


# --- syntax -----------------------------------------------------------------------------------


def test_inline_comments_are_ignored() -> None:
    """'# ...' and '; ...' after a value are comments."""
    config = parse("[push]\npush-throttle = 250  # ms\npush-timeout = 3000 ; ms\n")
    assert (config.push.push_throttle, config.push.push_timeout) == (250, 3000)


def test_listen_accepts_several_endpoints() -> None:
    """listen splits on whitespace and continuation lines, skipping comment lines."""
    config = parse(
        "[server]\nlisten = tcp:8080:interface=127.0.0.1 unix:/run/j.sock\n"
        "  # the IPv6 one\n  tcp6:8080:interface=\\:\\:1\n"
    )
    assert config.server.listen == (
        "tcp:8080:interface=127.0.0.1",
        "unix:/run/j.sock",
        "tcp6:8080:interface=\\:\\:1",
    )


def test_systemd_endpoint_accepted_without_inherited_sockets() -> None:
    """A systemd: endpoint validates outside socket activation (e.g. ExecStartPre check)."""
    config = parse("[server]\nlisten = systemd:domain=INET:index=0\n")
    assert config.server.listen == ("systemd:domain=INET:index=0",)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(w, True) for w in ("true", "yes", "on", "1", "TRUE", "Yes")]
    + [(w, False) for w in ("false", "no", "off", "0", "Off")],
)
def test_booleans(raw: str, expected: bool) -> None:
    """Booleans accept true/false, yes/no, on/off, 1/0 in any case."""
    config = parse(
        f"[push]\nallow-private-urls = {raw}\n[auth]\nallow-access-token-query = {raw}\n"
    )
    assert config.push.allow_private_urls is expected
    assert config.auth.allow_access_token is expected


def test_throttles_may_be_zero() -> None:
    """A throttle of 0 turns it off and is accepted."""
    config = parse(
        "[push]\npush-throttle = 0\n[event-source]\nevent-source-throttle = 0\n"
        "[websocket]\nws-throttle = 0\n"
    )
    assert config.push.push_throttle == config.websocket.ws_throttle == 0
    assert config.event_source.event_source_throttle == 0


def test_boundaries_are_accepted() -> None:
    """expires-max of exactly 48 h and ping limits of exactly 30 and 300 are valid."""
    config = parse(
        "[push]\nexpires-max = 172800\n[event-source]\nping-min = 30\nping-max = 300\n"
        "[auth]\ncache-ttl = 0.5\n"
    )
    assert config.push.expires_max == 172800
    assert (config.event_source.ping_min, config.event_source.ping_max) == (30, 300)
    assert config.auth.cache_ttl == 0.5


def test_public_url_trailing_slash_is_dropped() -> None:
    """public-url loses its trailing slash so that paths can be appended."""
    config = parse("[server]\npublic-url = https://jmap.example.com/push/\n")
    assert config.server.public_url == "https://jmap.example.com/push"


def test_urgency_is_normalised() -> None:
    """urgency is case-insensitive and stored in lower case."""
    config = parse("[push]\nurgency = Very-Low\n[log]\naccess-log = off\n")
    assert (config.push.urgency, config.log.access_log) == ("very-low", False)


@pytest.mark.parametrize("subject", ["mailto:postmaster@example.com", "https://example.com/c"])
def test_vapid_subject_accepts_mailto_and_https(subject: str) -> None:
    """VAPID-*: the sub claim may be a mailto: or https: URI."""
    assert parse(f"[push]\nvapid-subject = {subject}\n").push.vapid_subject == subject


def test_cors_origins_list() -> None:
    """cors-origins splits on commas and spaces, normalises case and keeps '*'."""
    config = parse("[event-source]\ncors-origins = https://Mail.Example.com, *  http://b:8080/\n")
    assert config.event_source.cors_origins == ("https://mail.example.com", "*", "http://b:8080")


def test_websocket_star_origin_means_any() -> None:
    """allowed-origins containing '*' is stored as empty, the one spelling of 'any'."""
    config = parse("[websocket]\nallowed-origins = * https://a.example\n")
    assert config.websocket.allowed_origins == ()
    config = parse("[websocket]\nallowed-origins = https://a.example\n")
    assert config.websocket.allowed_origins == ("https://a.example",)


# --- rejections -------------------------------------------------------------------------------


def test_unknown_section() -> None:
    """An unknown section (including DEFAULT) is rejected with its name."""
    assert rejection("[pusj]\n").startswith(f"{PATH}: [pusj]: unknown section")
    message = rejection("[DEFAULT]\naccess-log = on\n")
    assert message.startswith(f"{PATH}: [DEFAULT]: unknown section")


def test_unknown_key() -> None:
    """An unknown key is rejected naming section and key, with the nearest known key."""
    assert rejection("[push]\npush-timout = 5\n") == (
        f"{PATH}: [push] push-timout: unknown key; did you mean push-timeout?")
    assert rejection("[push]\npush-throtle = 5\n") == (
        f"{PATH}: [push] push-throtle: unknown key; did you mean push-throttle?")
    assert rejection("[server]\nzzz = 1\n") == f"{PATH}: [server] zzz: unknown key"


def test_key_of_another_section_names_it() -> None:
    """A key written under the wrong section says where it belongs."""
    assert rejection("[server]\npush-throttle = 5\n") == (
        f"{PATH}: [server] push-throttle: unknown key; it belongs in [push]")
    assert rejection("[admin]\nmax-connections-per-user = 5\n").endswith(
        "it belongs in [event-source] or [websocket]")


def test_unknown_section_suggests_the_nearest() -> None:
    """A misspelt section name gets the nearest known one before the full list."""
    message = rejection("[evnt-source]\nping-min = 5\n")
    assert message.startswith(
        f"{PATH}: [evnt-source]: unknown section; did you mean [event-source]? (known: server")
    assert "did you mean" not in rejection("[xyzzy]\n")


@pytest.mark.parametrize("endpoint", ["tcp:80800", "tcp:65536:interface=127.0.0.1",
                                      "tcp6:70000", "tcp:port=99999", "tcp:-1"])
def test_out_of_range_port_is_rejected(endpoint: str) -> None:
    """A listen port outside 0..65535 is refused by the config check (Twisted itself parses
    it and fails only in bind() with an OverflowError)."""
    message = rejection(f"[server]\nlisten = tcp:1234 {endpoint}\n")
    assert message.startswith(f"{PATH}: [server] listen: port ")
    assert message.endswith(f"out of range 0-65535 in {endpoint!r}")


@pytest.mark.parametrize("endpoint", ["tcp:0", "tcp:65535:interface=127.0.0.1", "tcp6:1",
                                      "unix:/run/jmappushd.sock"])
def test_in_range_ports_pass(endpoint: str) -> None:
    """The edges of the range (0 = any free port) and non-TCP endpoints pass."""
    assert parse(f"[admin]\nlisten = {endpoint}\n").admin.listen == (endpoint,)


@pytest.mark.parametrize("url", ["http://example.com:0", "https://example.com:65536"])
def test_public_url_port_out_of_range(url: str) -> None:
    """public-url's port must be 1..65535."""
    assert rejection(f"[server]\npublic-url = {url}\n") == (
        f"{PATH}: [server] public-url: bad port in {url!r} (1-65535)")


def test_field_names_with_underscores_are_not_keys() -> None:
    """Python field spellings are not accepted as INI keys."""
    assert "[push] push_timeout: unknown key" in rejection("[push]\npush_timeout = 5\n")
    assert "[auth] allow-access-token: unknown key" in rejection(
        "[auth]\nallow-access-token = true\n"
    )


def test_not_a_number_message() -> None:
    """A non-number gives the documented one-line message."""
    message = rejection("[push]\npush-timeout = abc\n")
    assert message == f"{PATH}: [push] push-timeout: not a number: 'abc'"


INT_KEYS = [
    (section, key)
    for section, key in all_keys()
    if isinstance(field_value(Config(), section, key), int)
    and not isinstance(field_value(Config(), section, key), bool)
]
AT_LEAST_ONE = [
    ("websocket", "ws-heartbeat-interval"),
    ("websocket", "ws-client-timeout"),
    ("push", "push-attempts-max"),
    ("push", "push-retry-interval"),
    ("push", "push-timeout"),
    ("push", "push-verify-timeout"),
    ("push", "push-max-total"),
    ("push", "create-rate"),
    ("push", "failing-give-up"),
    ("jmap", "max-size-request"),
    ("jmap", "max-concurrent-requests"),
    ("jmap", "max-calls-in-request"),
    ("jmap", "max-objects-in-get"),
    ("jmap", "max-objects-in-set"),
    ("event-source", "max-connections-per-user"),
    ("event-source", "ping-min"),
    ("websocket", "max-connections-per-user"),
]


@pytest.mark.parametrize(("section", "key"), INT_KEYS)
@pytest.mark.parametrize("raw", ["abc", "1.5", ""])
def test_integer_keys_reject_non_integers(section: str, key: str, raw: str) -> None:
    """Every integer key rejects text, fractions and empty values."""
    message = rejection(f"[{section}]\n{key} = {raw}\n")
    assert message.startswith(f"{PATH}: [{section}] {key}: not a")
    assert repr(raw) in message


@pytest.mark.parametrize(("section", "key"), INT_KEYS)
def test_integer_keys_reject_negative(section: str, key: str) -> None:
    """Every integer key rejects negative numbers."""
    assert rejection(f"[{section}]\n{key} = -1\n").startswith(f"{PATH}: [{section}] {key}: must")


@pytest.mark.parametrize(("section", "key"), AT_LEAST_ONE)
def test_zero_rejected_where_meaningless(section: str, key: str) -> None:
    """Limits, timeouts, intervals and counts where 0 makes no sense must be >= 1."""
    assert rejection(f"[{section}]\n{key} = 0\n") == (
        f"{PATH}: [{section}] {key}: must be at least 1: 0"
    )


def test_jmap_limits_fit_json_integers() -> None:
    """Core limits above 2^53-1 cannot be advertised as JSON UnsignedInt and are rejected."""
    message = rejection(f"[jmap]\nmax-size-request = {2**53}\n")
    assert message.startswith(f"{PATH}: [jmap] max-size-request: must be at most")


@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "inf"])
def test_cache_ttl_rejects_bad_numbers(raw: str) -> None:
    """cache-ttl must be a finite, non-negative number of seconds."""
    assert rejection(f"[auth]\ncache-ttl = {raw}\n").startswith(f"{PATH}: [auth] cache-ttl: ")


def test_bad_boolean() -> None:
    """A boolean key rejects other words."""
    message = rejection("[push]\nrequire-keys = maybe\n")
    assert message.startswith(f"{PATH}: [push] require-keys: not a boolean")


@pytest.mark.parametrize("section", ["server", "admin"])
@pytest.mark.parametrize(
    "endpoint", ["tcp:notaport", "bogus:1", "tcp:8080:colour=blue", "8080", "systemd:domain=X"]
)
def test_bad_endpoint(section: str, endpoint: str) -> None:
    """An endpoint Twisted cannot parse is rejected naming the endpoint."""
    message = rejection(f"[{section}]\nlisten = tcp:1234 {endpoint}\n")
    assert message.startswith(f"{PATH}: [{section}] listen: bad endpoint {endpoint!r}")


@pytest.mark.parametrize("section", ["server", "admin"])
def test_empty_listen(section: str) -> None:
    """listen needs at least one endpoint."""
    message = rejection(f"[{section}]\nlisten =\n")
    assert message.startswith(f"{PATH}: [{section}] listen: needs at least one endpoint")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com",
        "example.com",
        "/jmap",
        "https://",
        "https://example.com/?x=1",
        "https://example.com/#top",
        "https://user:pw@example.com",
        "https://example.com:99999",
        "",
    ],
)
def test_bad_public_url(url: str) -> None:
    """public-url must be an absolute http(s) URL without query, fragment or credentials."""
    message = rejection(f"[server]\npublic-url = {url}\n")
    assert message.startswith(f"{PATH}: [server] public-url: ")


def test_bad_urgency() -> None:
    """urgency must be one of RFC 8030's four values."""
    message = rejection("[push]\nurgency = urgent\n")
    assert message == (
        f"{PATH}: [push] urgency: must be one of very-low, low, normal, high: 'urgent'"
    )


@pytest.mark.parametrize("subject", ["postmaster@example.com", "http://example.com", "mailto:"])
def test_bad_vapid_subject(subject: str) -> None:
    """VAPID-*: vapid-subject must be a mailto: or https: URI."""
    message = rejection(f"[push]\nvapid-subject = {subject}\n")
    assert message.startswith(f"{PATH}: [push] vapid-subject: must be a mailto: or https: URI")


def test_ping_bounds() -> None:
    """C-ES-1: ping-min may not exceed 30 s and ping-max may not be below 300 s."""
    assert rejection("[event-source]\nping-min = 31\n") == (
        f"{PATH}: [event-source] ping-min: must be at most 30: 31"
    )
    assert rejection("[event-source]\nping-max = 299\n") == (
        f"{PATH}: [event-source] ping-max: must be at least 300: 299"
    )


def test_expires_max_at_least_48_hours() -> None:
    """C-PS-1: expires-max below 48 h violates RFC 8620 §7.2 and is rejected."""
    assert rejection("[push]\nexpires-max = 172799\n") == (
        f"{PATH}: [push] expires-max: must be at least 172800: 172799"
    )


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("event-source", "cors-origins", "https://a.example/path"),
        ("event-source", "cors-origins", "a.example"),
        ("websocket", "allowed-origins", "ftp://a.example"),
        ("websocket", "allowed-origins", "https://a.example?x"),
    ],
)
def test_bad_origin(section: str, key: str, value: str) -> None:
    """An origin list entry must be '*' or scheme://host[:port]."""
    message = rejection(f"[{section}]\n{key} = {value}\n")
    assert message == f"{PATH}: [{section}] {key}: not an origin (scheme://host[:port]): {value!r}"


def test_bad_access_log_flag() -> None:
    """access-log must be a boolean."""
    assert rejection("[log]\naccess-log = maybe\n").startswith(f"{PATH}: [log] access-log:")


@pytest.mark.parametrize(
    ("section", "key"), [("server", "state-dir"), ("admin", "token-file"), ("storage", "path")]
)
def test_empty_path(section: str, key: str) -> None:
    """A path key may not be empty (it would silently mean the config directory)."""
    assert rejection(f"[{section}]\n{key} =\n") == f"{PATH}: [{section}] {key}: must not be empty"


def test_duplicate_key() -> None:
    """A key given twice in a section is an error naming it and the line."""
    message = rejection("[push]\nttl = 1\nTTL = 2\n")
    assert message == f"{PATH}: [push] ttl: duplicate key (line 3)"


def test_duplicate_section() -> None:
    """A section given twice is an error naming it and the line."""
    message = rejection("[push]\nttl = 1\n\n[push]\n")
    assert message == f"{PATH}: [push]: duplicate section (line 4)"


def test_unparsable_line() -> None:
    """A line that is not 'key = value' is reported with its section and line number."""
    message = rejection("[log]\naccess-log = on\n[push]\nttl 60\n")
    assert message == f"{PATH}: [push] line 4: expected 'key = value', got 'ttl 60'"


def test_key_before_any_section() -> None:
    """A key above the first section header is reported with its line."""
    assert rejection("# hello\nttl = 60\n") == (
        f"{PATH}: line 2: 'ttl = 60' comes before any [section]"
    )


# --- load_config ------------------------------------------------------------------------------


def test_load_config_reads_file(tmp_path: Path) -> None:
    """load_config parses the file and anchors relative paths at its directory."""
    path = tmp_path / "conf" / "j.ini"
    path.parent.mkdir()
    path.write_text("[server]\nstate-dir = state\n", encoding="utf-8")
    config = load_config(str(path), environ={})
    assert config.path == str(path)
    assert config.server.state_dir == str(tmp_path / "conf" / "state")


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it."""
    path = str(tmp_path / "nope.ini")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read: ")):
        load_config(path)


def test_load_config_directory(tmp_path: Path) -> None:
    """A directory instead of a file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read: ")):
        load_config(str(tmp_path))


def test_load_config_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is a ConfigError naming it."""
    path = tmp_path / "latin1.ini"
    path.write_bytes(b"[auth]\nrealm = caf\xe9\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not UTF-8")):
        load_config(str(path))


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    """Validation errors from a loaded file carry the path as given."""
    path = tmp_path / "bad.ini"
    path.write_text("[push]\npush-timeout = abc\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"{path}: [push] push-timeout: not a number: 'abc'"


# --- shipped files ----------------------------------------------------------------------------


def sample_keys() -> dict[tuple[str, str], tuple[bool, str, list[str]]]:
    """(section, key) -> (is set, value, comment lines above) for every key in the sample."""
    found: dict[tuple[str, str], tuple[bool, str, list[str]]] = {}
    section = ""
    comments: list[str] = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        header = re.fullmatch(r"\[([^]]+)\]", line)
        key_line = re.fullmatch(r"(#?)([a-z][a-z0-9-]*) =(.*)", line)
        if header:
            section, comments = header.group(1), []
        elif key_line:
            key = (section, key_line.group(2))
            assert key not in found, f"{key} documented twice"
            found[key] = (not key_line.group(1), key_line.group(3).strip(), comments)
            comments = []
        elif line.startswith("#"):
            comments.append(line)
        else:
            comments = []
    return found


def test_sample_config_loads() -> None:
    """etc/jmappushd.ini loads without error."""
    config = load_config(str(SAMPLE), environ={})
    assert config.server.public_url.startswith("https://")


def test_sample_documents_every_key() -> None:
    """Every field of every section appears as a key in etc/jmappushd.ini, and nothing else."""
    assert set(sample_keys()) == set(all_keys())


def test_sample_comments_state_defaults() -> None:
    """Each key in the sample has a comment above it that states its default."""
    for key, (_is_set, _value, comments) in sample_keys().items():
        assert any("Default:" in c for c in comments), key


def test_sample_commented_values_are_the_defaults() -> None:
    """Uncommenting every '#key = value' line of the sample changes nothing (docs cannot drift)."""
    text = SAMPLE.read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^#([a-z][a-z0-9-]* =)", r"\1", text)
    documented = parse_config(uncommented, str(SAMPLE), environ={})
    defaults = parse_config("", str(SAMPLE), environ={})
    for (section, key), (is_set, _value, _comments) in sample_keys().items():
        if not is_set:
            assert field_value(documented, section, key) == field_value(defaults, section, key), key


def test_sample_meets_published_defaults_and_rfc_minimums() -> None:
    """SES-7: the shipped config keeps the published defaults and RFC 8620's minimum limits."""
    config = load_config(str(SAMPLE), environ={})
    for (section, key), expected in PUBLISHED_DEFAULTS.items():
        assert field_value(config, section, key) == expected, (section, key)
    for name, minimum in RFC_MINIMUMS.items():
        assert getattr(config.jmap, name) >= minimum, name


def test_dev_config() -> None:
    """etc/dev.ini listens on loopback 8080/8081, keeps state in ../var, allows private URLs."""
    config = load_config(str(DEV), environ={"STATE_DIRECTORY": "/ignored"})
    assert config.server.listen == ("tcp:8080:interface=127.0.0.1",)
    assert config.admin.listen == ("tcp:8081:interface=127.0.0.1",)
    assert config.server.state_dir == os.path.normpath(ETC / ".." / "var")
    assert config.storage.path == os.path.join(config.server.state_dir, "jmappushd.sqlite3")
    assert config.server.public_url == "http://127.0.0.1:8080"
    assert config.push.allow_private_urls is True
