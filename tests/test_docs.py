"""Every command is documented: help text that ends in an example, and a mention in the README."""

from pathlib import Path

import pytest
import typer

from clipsearch.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group, prefix=""):
    """Every command and sub-command, by its full name ("tag export")."""
    for name, cmd in group.commands.items():
        yield prefix + name, cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, f"{prefix}{name} ")


COMMANDS = dict(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example_and_is_in_the_readme(name):
    help_text = COMMANDS[name].help or ""
    assert help_text.strip(), f"{name} has no help"
    assert "Example: `clipsearch " + name in help_text.strip().splitlines()[-1]
    assert f"clipsearch {name}" in README


def test_public_api_is_exported():
    import clipsearch

    for name in clipsearch.__all__:
        assert getattr(clipsearch, name) is not None
