"""Every command the docs show runs as written, on a demo-model library.

The commands are read from README.md's ```bash and ```console code blocks (in console
blocks, the lines that start with ``$ clipsearch``) and from the ``Example:`` lines of
every command's ``--help``. The files and folders they name are made here (``PLACES``),
the model they would download is swapped for the bundled demo model, and each command
must exit 0, or fail exactly as ``EXPECTED_FAILURES`` says and why. A line the docs gain
later runs too: one that names a path this file does not make fails, it is never skipped.

Most commands run in this process through typer's CliRunner, each on its own copy of one
prepared library; ``index`` starts from an empty library, as a first run does, and
``serve`` runs as a process of its own, stopped with Ctrl-C.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsearch import Library, Query, demoworld
from clipsearch.cli import app
from conftest import ctrl_c_as_on_a_terminal
from test_docs import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Every file and folder the documented commands read, as the docs write it, and what
# stands in for it here. `~` is the home of this test's world; other relative paths are
# relative to the folder the commands run in.
PHOTOS_IN_LIBRARY = {"cat.jpg": ("orange", "circle"), "beach.jpg": ("yellow", "square"),
                     "rex.jpg": ("black", "star")}
OUTSIDE = {"photo.jpg": ("red", "circle"), "./sunset.jpg": ("orange", "ring"), "a.jpg": ("red", "square"),
           "b.jpg": ("green", "triangle"), "c.jpg": ("blue", "cross")}
EXAMPLES = ("circle", "star")  # the few-shot classifier's labels
LABELLED = ("beach", "sunset", "balloon")  # true labels: they must be labels of the bundled `photos` set
PLACES = {
    "~/Photos": "48 demo pictures and the three below: the folder the library indexed",
    **{f"~/Photos/{name}": "a picture in the library" for name in PHOTOS_IN_LIBRARY},
    **{name: "a picture outside the library" for name in OUTSIDE},
    "./examples": f"one sub-folder of four pictures per label: {', '.join(EXAMPLES)}",
    "./labelled": f"sub-folders named after labels of the `photos` set: {', '.join(LABELLED)}",
    "data/samples": "the repository's own data/samples, linked",
    "./red-album": "an empty folder, to export the album `red` into",
}
# Options whose value is a file a command writes: it must be there afterwards.
OUTPUT_OPTIONS = ("--plot", "--output", "-o")

# Documented commands that cannot succeed here, what they must do instead, and why.
EXPECTED_FAILURES = {
    ("move-db", "postgresql://clip@db.example.org/photos"): (
        "db.example.org",
        "the docs' placeholder for a PostgreSQL server: none answers there, so the move must stop with one "
        "clear line and leave the library as it was"),
}

_PATH_SUFFIX = re.compile(r"\.(jpe?g|png|webp|gif|heic|avif|tiff?|bmp|svg|pdf|csv|json|ya?ml|toml|txt|xmp)$", re.I)


@dataclass
class Case:
    argv: tuple[str, ...]  # as it will run: places mapped, the model swapped
    sources: list[str] = field(default_factory=list)  # where the docs show it
    problem: str | None = None  # why it cannot be run as written

    @property
    def name(self) -> str:
        return self.argv[0] if self.argv else ""


def _segments(line: str) -> list[list[str]]:
    """The ``clipsearch ...`` commands of one shell line: comments dropped, split at ``&&``,
    ``;`` and ``|``."""
    tokens = shlex.split(line, comments=True)
    out, current = [], []
    for token in [*tokens, "&&"]:
        if token in ("&&", ";", "|", "||"):
            if current[:1] == ["clipsearch"]:
                out.append(current[1:])
            current = []
        else:
            current.append(token)
    return out


def readme_commands() -> list[tuple[str, list[str]]]:
    text = README.read_text()
    found = []
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        lang, first = block.group(1), text.count("\n", 0, block.start(2)) + 1
        if lang not in ("bash", "console"):
            continue
        for n, line in enumerate(block.group(2).splitlines()):
            if lang == "console":
                if not line.startswith("$ clipsearch"):
                    continue  # a command's output, or another program
                line = line[2:]
            for argv in _segments(line):
                found.append((f"README.md:{first + n}", argv))
    return found


def help_examples() -> list[tuple[str, list[str]]]:
    found = []
    for name, cmd in COMMANDS.items():
        for line in (cmd.help or "").splitlines():
            for example in re.findall(r"Example: `([^`]+)`", line):
                for argv in _segments(example):
                    found.append((f"clipsearch {name} --help", argv))
    return found


def _path_like(token: str) -> bool:
    if token.startswith("-") or "://" in token:
        return False
    return token.startswith(("~", ".", "/")) or "/" in token or bool(_PATH_SUFFIX.search(token))


def prepare(argv: list[str]) -> tuple[tuple[str, ...], str | None]:
    """``argv`` as it runs here, and what stops it, if anything."""
    out: list[str] = []
    problem = None
    tokens = iter(argv)
    for token in tokens:
        option, eq, value = token.partition("=")
        if option in ("--model", "-m"):
            # A real model would be downloaded; the demo model is bundled.
            if not eq:
                next(tokens, None)
            out += ["--model", "demo"]
            continue
        if option in ("--port", "-p") and argv[:1] == ["serve"]:
            # The documented port may be taken on a shared machine: any free one.
            if not eq:
                next(tokens, None)
            out += ["--port", "0"]
            continue
        if option in OUTPUT_OPTIONS:
            out.append(token)
            if not eq:
                out.append(next(tokens, ""))
            continue
        if _path_like(token) and token not in PLACES:
            problem = problem or (f"it names {token!r}, which this test does not make: add it to PLACES in "
                                  f"{Path(__file__).name}")
        out.append(token)
    if out[:1] == ["index"] and "--model" not in out:
        out += ["--model", "demo"]  # a first index would pick the default model, which needs a download
    if out[:1] == ["serve"] and "--port" not in out:
        out += ["--port", "0"]
    return tuple(out), problem


def collect() -> list[Case]:
    cases: dict[tuple[str, ...], Case] = {}
    for source, argv in readme_commands() + help_examples():
        prepared, problem = prepare(argv)
        case = cases.setdefault(prepared, Case(prepared, problem=problem))
        case.sources.append(source)
    return list(cases.values())


CASES = collect()


# -- the world the commands run in -----------------------------------------------------

@dataclass(frozen=True)
class World:
    home: Path  # what ~ stands for
    work: Path  # the folder commands run in
    library: Path  # indexed, tagged with demo-colours, with a classifier `pets`; copied for each command

    def expand(self, token: str) -> str:
        """The shell's tilde expansion, for this world's home."""
        return str(self.home) + token[1:] if token == "~" or token.startswith("~/") else token

    def place(self, name: str) -> Path:
        return Path(self.expand(name)) if name.startswith("~") else self.work / name


def _draw(path: Path, colour: str, shape: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = demoworld.random_scene(random.Random(seed), colour, shape, (96, 160))
    demoworld.render(scene).save(path, quality=90)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("readme")
    w = World(root / "home", root / "work", root / "library")
    photos = w.place("~/Photos")
    demoworld.write_images(photos, 48, seed=11, size_range=(64, 160))
    for n, (name, (colour, shape)) in enumerate(PHOTOS_IN_LIBRARY.items()):
        _draw(photos / name, colour, shape, seed=n)
    for n, (name, (colour, shape)) in enumerate(OUTSIDE.items()):
        _draw(w.place(name), colour, shape, seed=100 + n)
    for shape in EXAMPLES:
        for n, colour in enumerate(("red", "green", "blue", "yellow")):
            _draw(w.place("./examples") / shape / f"{colour}.png", colour, shape, seed=200 + n)
    for n, label in enumerate(LABELLED):
        for k, colour in enumerate(("purple", "white")):
            _draw(w.place("./labelled") / label / f"{k}.jpg", colour, demoworld.SHAPES[n], seed=300 + k)
    w.place("./red-album").mkdir(parents=True)
    (w.work / "data").mkdir()
    (w.work / "data" / "samples").symlink_to(ROOT / "data" / "samples")
    with Library.open(w.library, model="demo") as lib:
        assert lib.index([photos]).added == 51
        lib.tag("demo-colours")
        lib.train_classifier("pets", w.place("./examples"))
        lib.head("photos")  # its label embeddings, cached in the library for the commands that use them
        lib.albums.create("red", Query.build("a red circle"))  # the album the docs show, pin and export
    return w


def test_the_docs_show_commands_and_each_place_is_made(world):
    assert len(CASES) >= 25, [c.argv for c in CASES]
    for name in COMMANDS:  # every command has an example (tests/test_docs.py), so each one runs here
        words = name.split()
        assert any(list(c.argv[:len(words)]) == words for c in CASES), name
    for name in PLACES:
        assert world.place(name).exists(), name
        assert any(name in c.argv for c in CASES), f"PLACES names {name}, which no documented command uses"
    for argv in EXPECTED_FAILURES:
        assert argv in {c.argv for c in CASES}, f"EXPECTED_FAILURES names {argv}, which the docs no longer show"


def _ids(case: Case) -> str:
    return " ".join(case.argv)[:80]


RUN_UNTIL_STOPPED = {"serve", "watch"}


@pytest.mark.parametrize("case", [c for c in CASES if c.name not in RUN_UNTIL_STOPPED], ids=_ids)
def test_a_documented_command_runs(case, world, tmp_path, monkeypatch):
    assert case.problem is None, f"{case.sources[0]}: {case.problem}"
    library = tmp_path / "library"
    if case.name != "index":  # a first index starts from nothing; the rest use a prepared library
        shutil.copytree(world.library, library)
    argv = [world.expand(a) for a in case.argv]
    outputs = [world.work / argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_OPTIONS]
    for out in outputs:
        out.unlink(missing_ok=True)
    monkeypatch.chdir(world.work)
    result = CliRunner().invoke(app, argv, env={"CLIPSEARCH_LIBRARY": str(library), "PGCONNECT_TIMEOUT": "10"})
    shown = f"{case.sources}: clipsearch {' '.join(argv)}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr, shown
    if case.argv in EXPECTED_FAILURES:
        mentions, _why = EXPECTED_FAILURES[case.argv]
        lines = result.stderr.splitlines()
        assert result.exit_code == 1, shown
        assert lines[0].startswith("error: ") and mentions in lines[0], shown
        assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), shown
        with Library.open(library, create=False) as lib:  # nothing lost
            assert lib.info().images == 51
        return
    assert result.exit_code == 0, shown
    assert (result.stdout + result.stderr).strip(), f"it says nothing: {shown}"
    if "--json" in argv:
        json.loads(result.stdout)
    for out in outputs:
        assert out.is_file() and out.stat().st_size > 0, shown
        assert f"wrote {out.relative_to(world.work)}" in result.stderr, shown


@pytest.mark.parametrize("case", [c for c in CASES if c.name == "serve"], ids=_ids)
def test_documented_serve_answers_and_stops_cleanly_on_ctrl_c(case, world, tmp_path):
    """``serve`` runs until stopped: it must say where it listens, answer, and end quietly
    on Ctrl-C (not with the message an interrupted ``index`` gives)."""
    assert case.problem is None, f"{case.sources[0]}: {case.problem}"
    library = tmp_path / "library"
    shutil.copytree(world.library, library)
    argv = [world.expand(a) for a in case.argv]
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", *argv], cwd=world.work,
                            env={**os.environ, "CLIPSEARCH_LIBRARY": str(library)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_on_a_terminal)
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            line = ""
        assert line.startswith("clipsearch serving "), (line, proc.poll())
        url = line.rsplit(" at ", 1)[1].strip()
        with urllib.request.urlopen(url + "api/info", timeout=60) as response:
            assert json.load(response)["images"] == 51
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "interrupted" not in err, err


@pytest.mark.parametrize("case", [c for c in CASES if c.name == "watch"], ids=_ids)
def test_documented_watch_follows_a_new_file_and_stops_cleanly_on_ctrl_c(case, world, tmp_path):
    """``watch`` runs until stopped: it must catch up, index a file that appears, and end
    quietly on Ctrl-C."""
    assert case.problem is None, f"{case.sources[0]}: {case.problem}"
    library = tmp_path / "library"
    shutil.copytree(world.library, library)
    argv = [world.expand(a) for a in case.argv]
    folder = Path(next(a for a in argv if Path(a).is_dir()))
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", *argv], cwd=world.work,
                            env={**os.environ, "CLIPSEARCH_LIBRARY": str(library)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_on_a_terminal)
    added = folder / "appeared while watched.png"
    try:
        line = proc.stderr.readline()
        assert line.startswith("watching "), (line, proc.poll())
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # the pipe must not fill
        shutil.copy(sorted(folder.glob("*.jpg"))[0], added)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with Library.open(library, create=False) as lib:
                if lib.image_id(added) is not None:
                    break
            time.sleep(0.3)
        else:
            raise AssertionError("the new file was not indexed")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        added.unlink(missing_ok=True)  # the world is shared by the other cases
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("n", range(len(PYTHON_BLOCKS)))
def test_the_python_examples_run(n, tmp_path):
    # In a process of its own, with a home of its own (they make a library under ~), in a
    # folder holding a copy of data/samples, which they name (and write sidecars beside).
    assert PYTHON_BLOCKS, "the README shows the Python API"
    shutil.copytree(ROOT / "data" / "samples", tmp_path / "data" / "samples")
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", PYTHON_BLOCKS[n]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
