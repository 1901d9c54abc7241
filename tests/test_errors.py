"""Errors name options the way the surface that shows them spells them."""

import ast
import inspect
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsearch import errors
from clipsearch.cli import app
from clipsearch.errors import ArgumentError, ClipSearchError, QueryError
from clipsearch.query import Term

PACKAGE = Path(errors.__file__).parent
ERRORS = {name for name, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, ClipSearchError)}
# The surfaces word their own errors: cli/ for a terminal, web/ for HTTP clients (and
# serve's start-up, which names serve's own flags).
SURFACES = {*(PACKAGE / "cli").rglob("*.py"), *(PACKAGE / "web").rglob("*.py")}
FLAG = re.compile(r"(?<![\w`-])--[a-z]")


def _texts(node: ast.AST) -> str:
    """The literal text of a message or hint (an f-string's literal parts; a conditional's
    both branches)."""
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _error_texts():
    for path in sorted(set(PACKAGE.rglob("*.py")) - SURFACES):
        tree = ast.parse(path.read_text(), str(path))
        constants = {t.id: v for n in ast.walk(tree) if isinstance(n, ast.Assign)
                     for t in n.targets if isinstance(t, ast.Name) for v in [n.value]}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
            if name not in ERRORS:
                continue
            for arg in [*call.args, *(k.value for k in call.keywords if k.arg in ("message", "hint"))]:
                if isinstance(arg, ast.Name) and arg.id in constants:  # a hint kept in a constant
                    arg = constants[arg.id]
                yield f"{path.relative_to(PACKAGE)}:{call.lineno}", _texts(arg)


def test_errors_outside_the_surfaces_name_options_neutrally():
    found = list(_error_texts())
    assert len(found) > 100  # the scan sees the raise sites
    # A flag is written [[option]], for each surface to spell; a command to run is in backquotes.
    flags = [(where, text) for where, text in found if FLAG.search(re.sub(r"`[^`]*`", "", text))]
    assert flags == []


def test_every_option_named_is_one_the_surfaces_know():
    named = {m for path in PACKAGE.rglob("*.py") for m in re.findall(r"\[\[(\w+)(?:=[^\]]*)?\]\]", path.read_text())}
    named -= {"name", "option"}  # errors.py's docstring and comments
    assert named and named <= errors.OPTIONS


def test_an_error_read_back_from_text_is_worded_again_for_each_surface():
    sent = ArgumentError("[[top_k]] must be at least 1", hint="try [[gpus_per_worker=0]] or `clipsearch models`")
    received = ArgumentError(errors.marked(sent.message), hint=errors.marked(sent.hint))
    assert received.worded("cli") == sent.worded("cli") == (
        "--top-k must be at least 1", "try --gpus-per-worker 0 or `clipsearch models`")


def test_each_surface_spells_an_option_its_own_way():
    error = ArgumentError("[[top_k]] must be at least 1", hint="use [[few_shot=3]], [[extensions=jpg]] or "
                          "leave out [[model]]; see `clipsearch models --help`")
    assert (error.message, error.hint) == (
        "`top_k` must be at least 1", "use `few_shot=3`, `extensions=jpg` or leave out `model`; "
        "see `clipsearch models --help`")
    assert error.worded("cli") == (
        "--top-k must be at least 1", "use --few-shot 3, --ext jpg or leave out --model; "
        "see `clipsearch models --help`")
    # The web API names its parameters, and the server's flags for what no request sets.
    assert error.worded("web") == (
        "`top_k` must be at least 1", "use `few_shot=3`, `ext=jpg` or leave out --model; "
        "see `clipsearch models --help`")
    assert str(error) == "`top_k` must be at least 1\nhint: " + error.hint
    plain = QueryError("the query text is empty")
    assert plain.worded("cli") == plain.worded("web") == ("the query text is empty", None)


def test_a_term_weight_error_says_what_to_use_in_python_on_the_cli_and_on_the_web(tmp_path):
    with pytest.raises(QueryError) as raised:
        Term.parse("0:sky")
    assert raised.value.hint == "use `exclude` to subtract a term"  # Query.build(exclude=...)
    result = CliRunner().invoke(app, ["search", "beach", "--and", "0:sky", "-L", str(tmp_path / "lib")])
    assert result.exit_code == 1
    assert "hint: use --not to subtract a term" in result.stderr


def test_the_web_api_names_its_parameters_in_hints(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from clipsearch import Library
    from clipsearch.web.app import create_app

    with Library.open(tmp_path / "lib", model="demo") as lib:
        client = TestClient(create_app(lib), raise_server_exceptions=False)
        answer = client.get("/api/search", params={"q": "a beach", "and": "0:sky"})
        assert answer.status_code == 400
        assert answer.json()["hint"] == "use `not` to subtract a term"
