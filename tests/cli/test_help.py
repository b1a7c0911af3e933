"""Every command, and the group, answer --help; --version works."""

from __future__ import annotations

import pytest

from amgmt import __version__
from amgmt.cli import COMMANDS, cli


def test_group_help_lists_every_command(amgmt) -> None:
    run = amgmt("--help")
    assert run.code == 0, run
    assert run.stdout.startswith("Usage: amgmt"), run
    assert "Exit codes:" in run.stdout
    assert COMMANDS, "the command table is empty"
    for name in COMMANDS:
        assert name in run.stdout, f"{name} missing from the group help"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(amgmt, name: str) -> None:
    command = cli.get_command(None, name)  # type: ignore[arg-type]
    assert command is not None
    assert (command.help or "").strip(), f"`amgmt {name}` has no help text"
    run = amgmt(name, "--help")
    assert run.code == 0, run
    assert run.stdout.startswith(f"Usage: amgmt {name}"), run
    assert command.help.strip().splitlines()[0].split()[0] in run.stdout
    assert run.stderr == ""


def test_version(amgmt) -> None:
    run = amgmt("--version")
    assert run.code == 0, run
    assert __version__ in run.stdout
