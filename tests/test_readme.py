"""README.rst tells the truth: its two commands, every config key, every CLI command."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from jmappushd.config import SECTIONS, ini_key
from jmappushd.ctl import _parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    """The first two literal blocks are `make run` and `make test`, and both targets exist."""
    blocks = re.findall(r"::\n\n    (.+)\n", README)
    assert blocks[:2] == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "\nrun:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_config_key_is_in_the_readme() -> None:
    """Each section and key of the config appears in the README's configuration part."""
    for section, (_, cls) in SECTIONS.items():
        assert f"``[{section}]``" in README, section
        for field in dataclasses.fields(cls):
            key = ini_key(cls, field.name)
            assert f"``{key}``" in README, f"[{section}] {key}"


def test_every_cli_command_is_in_the_readme() -> None:
    """Each jmappushctl command and action appears in the README."""
    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command_parser in sub.choices.items():  # type: ignore[union-attr]
        actions = [a for a in command_parser._actions if a.dest == "action"]
        if not actions:
            assert f"jmappushctl -c FILE {name}" in README, name
            continue
        for action in actions[0].choices:
            assert re.search(rf"{name} {action}\b", README), f"{name} {action}"


def test_make_help_lists_every_target() -> None:
    """`make help` prints the `## target:` lines; every declared target has one and exists."""
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY: (.+)$", makefile, re.M)
    assert phony is not None
    helped = set(re.findall(r"^## ([\w-]+):", makefile, re.M))
    for target in phony.group(1).split():
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target
        if target != "python-check":  # an internal step, not a command for people
            assert target in helped, f"make help does not list {target}"
    assert helped <= set(phony.group(1).split())
