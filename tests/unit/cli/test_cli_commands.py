"""The CLI's table of lazily loaded commands (amgmt.cli.COMMANDS) says exactly what the command modules register, and
`amgmt --help` (or a light command's --help) imports neither the other command modules nor boto, moto or sqlite."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import asyncclick as click
import pytest

import amgmt.cli
from amgmt.cli import COMMANDS, EXIT_CODES_HELP, AmgmtGroup

HEAVY = ("aioboto3", "aiobotocore", "botocore", "boto3", "moto", "aiosqlite", "amgmt.s3.client", "amgmt.upload.batch")


def registered_commands() -> dict[str, tuple[str, click.Command]]:
    """name -> (module, command) for every command a module of amgmt.cli registers, found without the table."""
    found: dict[str, tuple[str, click.Command]] = {}
    for info in pkgutil.iter_modules(amgmt.cli.__path__, prefix="amgmt.cli."):
        module = importlib.import_module(info.name)
        if not callable(getattr(module, "register", None)):
            continue
        group = click.Group("probe")
        module.register(group)
        for name, command in group.commands.items():
            assert name not in found, f"`{name}` registered by {found[name][0]} and {info.name}"
            found[name] = (info.name, command)
    return found


def test_the_table_lists_exactly_the_registered_commands() -> None:
    registered = registered_commands()
    assert sorted(registered) == sorted(COMMANDS), (
        "amgmt.cli.COMMANDS must list every command a module registers, and no other"
    )
    for name, (module, command) in registered.items():
        assert COMMANDS[name].module == module, f"`{name}` is registered by {module}"
        assert COMMANDS[name].short_help == command.get_short_help_str(limit=10_000), (
            f"the short help of `{name}` in amgmt.cli.COMMANDS must be the first sentence of its help"
        )


def test_every_command_has_help_text_and_is_documented() -> None:
    registered = registered_commands()
    assert sorted(registered) == sorted(COMMANDS) and len(registered) >= 16, sorted(registered)  # never vacuous
    documented = (Path(__file__).parents[3] / "docs" / "commands.md").read_text()
    for name, (_, command) in registered.items():
        assert (command.help or "").strip(), f"`amgmt {name}` has no help text"
        assert f"amgmt {name}" in documented, f"`amgmt {name}` is not in docs/commands.md"


def test_no_command_module_imports_another() -> None:
    """Command modules share code through amgmt.cli.common (and render, progress_bar), never through each other."""
    shared = {"amgmt.cli", "amgmt.cli.common", "amgmt.cli.render", "amgmt.cli.progress_bar", "amgmt.cli.object_options"}
    commands = {info.name for info in pkgutil.iter_modules(amgmt.cli.__path__, prefix="amgmt.cli.")} - shared
    assert len(commands) >= 10
    for module in sorted(commands):
        tree = ast.parse(Path(importlib.import_module(module).__file__ or "").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not (imported & commands), f"{module} imports {sorted(imported & commands)}"


def test_the_group_help_is_the_same_before_and_after_loading_the_commands() -> None:
    group = AmgmtGroup("amgmt", lazy_commands=COMMANDS, epilog=EXIT_CODES_HELP)
    ctx = click.Context(group, info_name="amgmt")
    lazy = group.get_help(ctx)
    assert not group.commands
    for name in COMMANDS:
        assert group.get_command(ctx, name) is not None
    assert sorted(group.commands) == sorted(COMMANDS)
    assert group.get_help(ctx) == lazy
    for name in COMMANDS:
        assert f"\n  {name} " in lazy


def test_an_unknown_command_is_not_found() -> None:
    group = AmgmtGroup("amgmt", lazy_commands=COMMANDS)
    assert group.get_command(click.Context(group), "nope") is None


def modules_imported_by(*args: str) -> list[str]:
    """The modules loaded by `python -m amgmt ARGS` (run in a fresh interpreter, as a user runs it)."""
    probe = (
        "import json, sys\n"
        "from amgmt.cli import main\n"
        f"sys.argv = ['amgmt', *{list(args)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stderr)


@pytest.mark.parametrize("args", [("--help",), ("--version",)])
def test_the_group_imports_no_command_module(args: tuple[str, ...]) -> None:
    loaded = modules_imported_by(*args)
    assert [m for m in loaded if m.startswith(HEAVY)] == []
    assert [m for m in loaded if m in {c.module for c in COMMANDS.values()}] == []


@pytest.mark.parametrize("name", ["config", "local-s3", "demo"])
def test_a_light_command_help_imports_no_s3_client(name: str) -> None:
    loaded = modules_imported_by(name, "--help")
    assert COMMANDS[name].module in loaded
    assert [m for m in loaded if m.startswith(HEAVY)] == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_answers_help(name: str) -> None:
    done = subprocess.run([sys.executable, "-m", "amgmt", name, "--help"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: amgmt {name}"), done.stdout
    assert COMMANDS[name].short_help.split()[0] in done.stdout
    assert done.stderr == ""
