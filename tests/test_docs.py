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


def _public_types() -> set[str]:
    """The clipsearch classes that a Python user of Library passes or receives: those named
    in the signatures of its public methods and properties, and in the fields of the
    results they return, every result type and every error."""
    import dataclasses
    import inspect
    import types
    import typing

    import clipsearch
    from clipsearch import errors, results
    from clipsearch.library import Library

    found: set[type] = set()

    def visit(annotation) -> None:
        if typing.get_origin(annotation) is not None or isinstance(annotation, types.UnionType):
            for arg in typing.get_args(annotation):
                visit(arg)
        elif isinstance(annotation, type) and annotation.__module__.startswith("clipsearch") \
                and annotation not in found:
            found.add(annotation)
            if dataclasses.is_dataclass(annotation):
                for field_type in typing.get_type_hints(annotation).values():
                    visit(field_type)

    public = {name: getattr(clipsearch, name) for name in clipsearch.__all__}
    for name, member in inspect.getmembers(Library):
        if name.startswith("_"):
            continue
        function = member.fget if isinstance(member, property) else member
        # library.py imports some of the types it names only for type checkers (a search
        # must not load them): they are resolved from the package, where a public one is.
        for annotation in typing.get_type_hints(function, localns=public).values():
            visit(annotation)
    for module in (errors, results):
        found |= {c for _, c in inspect.getmembers(module, inspect.isclass)
                  if c.__module__ == module.__name__ and not c.__name__.startswith("_")}
    return {c.__name__ for c in found}


def test_all_names_exactly_the_public_api():
    import clipsearch

    assert len(clipsearch.__all__) == len(set(clipsearch.__all__))
    expected = _public_types() | {"Library", "default_library_dir", "__version__"}
    assert set(clipsearch.__all__) - expected == set(), "exported, but no Library user meets them"
    assert expected - set(clipsearch.__all__) == set(), "a Library user meets them, but they are not exported"
    for name in clipsearch.__all__:
        assert getattr(clipsearch, name) is not None and name in dir(clipsearch)


def test_importing_the_package_loads_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, clipsearch; heavy = {'torch', 'faiss', 'sqlalchemy', 'PIL', 'numpy'} & set(sys.modules); "
            "print(sorted(heavy))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


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
