"""The [push] keys of issue 10: in-flight caps and the back-off cap, validated at start."""

from __future__ import annotations

import pytest

from jmappushd.config import ConfigError, PushConfig, parse_config

PATH = "/etc/jmappushd/test.ini"


def push(text: str) -> PushConfig:
    return parse_config(f"[push]\n{text}\n", PATH, environ={}).push


def test_defaults() -> None:
    """256 POSTs in flight overall, 32 per origin, back-off capped at one hour."""
    config = push("")
    assert config.max_in_flight == 256
    assert config.max_in_flight_per_origin == 32
    assert config.push_backoff_max == 3_600_000 and config.push_backoff_max_s == 3600


def test_values_are_read() -> None:
    """Each key sets its field; push-backoff-max = 0 (no back-off) is allowed."""
    config = push("max-in-flight = 10\nmax-in-flight-per-origin = 3\npush-backoff-max = 0")
    assert (config.max_in_flight, config.max_in_flight_per_origin) == (10, 3)
    assert config.push_backoff_max == 0


@pytest.mark.parametrize(("line", "key"), [
    ("max-in-flight = 0", "max-in-flight"),
    ("max-in-flight = many", "max-in-flight"),
    ("max-in-flight-per-origin = 0", "max-in-flight-per-origin"),
    ("push-backoff-max = -1", "push-backoff-max"),
    ("push-backoff-max = 1.5", "push-backoff-max"),
])
def test_bad_values_name_file_section_and_key(line: str, key: str) -> None:
    """A bad value stops the daemon with one line naming the file, [push] and the key."""
    with pytest.raises(ConfigError) as info:
        push(line)
    message = str(info.value)
    assert message.startswith(f"{PATH}: [push] {key}: ") and "\n" not in message
