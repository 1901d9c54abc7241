"""Every command is documented: help text that ends in an example, and a mention in the README."""

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

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


# Commands that take --library but name their database themselves: move-db's argument is
# the database it moves the metadata to.
NAMES_ITS_DATABASE = {"move-db"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_that_opens_a_library_takes_db_url(name):
    options = {opt for param in COMMANDS[name].params for opt in param.opts}
    if "--library" in options and name not in NAMES_ITS_DATABASE:
        assert "--db-url" in options, f"clipsearch {name} takes --library but not --db-url"


def test_the_library_commands_are_the_ones_expected():
    """Guards the test above: a command that stopped taking --library would pass it unseen."""
    with_library = {name for name, cmd in COMMANDS.items() if any("--library" in p.opts for p in cmd.params)}
    assert with_library >= {"index", "search", "similar", "tag", "tag add", "tag export", "tags", "classify",
                            "serve", "move-db", "classifier train", "info"}
    assert "models" not in with_library and "labels" not in with_library


@pytest.mark.parametrize("name", [""] + sorted(COMMANDS))
def test_help_shows_placeholders_a_person_reads(name):
    result = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.stderr
    for raw in ("<bool>", "list[", "<Path>", "<path>", "<str>", "%Y", "%H"):
        assert raw not in result.stdout, f"clipsearch {name} --help shows {raw}"
