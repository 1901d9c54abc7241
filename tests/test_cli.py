"""End to end: the real CLI, the real demo model, real image files and a real library on disk."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsearch import demoworld
from clipsearch.cli import app
from conftest import ctrl_c_as_on_a_terminal, run_cli

runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def label_of(path: str) -> str:
    colour, shape, _ = Path(path).stem.split("_")
    return f"{colour} {shape}"


@pytest.fixture
def small_library(tmp_path):
    """A fresh library of 12 demo images, indexed through the CLI."""
    photos = tmp_path / "photos"
    demoworld.write_images(photos, 12, seed=3, size_range=(64, 256))
    lib = tmp_path / "lib"
    result = cli("index", str(photos), "--library", str(lib), "--model", "demo", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["added"] == 12 and report["error_count"] == 0
    return photos, lib


@pytest.mark.parametrize("label", ["red circle", "blue square", "yellow star", "green triangle",
                                   "purple ring", "white cross", "orange square", "black star"])
def test_text_query_finds_the_right_colour_and_shape(demo_library, label):
    result = cli("search", f"a {label}", "-n", "1", "--json", "-L", str(demo_library))
    assert result.exit_code == 0, result.stderr
    [hit] = json.loads(result.stdout)
    assert label_of(hit["path"]) == label
    assert Path(hit["path"]).is_absolute() and isinstance(hit["score"], float)


def test_image_query_finds_the_same_picture(demo_library, demo_images, tmp_path):
    for path in demo_images[::7]:
        # A copy outside the library is decoded and encoded; the original must come first.
        outside = tmp_path / f"copy-of-{path.name}"
        shutil.copy(path, outside)
        result = cli("search", "--image", str(outside), "-n", "3", "--json", "-L", str(demo_library))
        assert result.exit_code == 0, result.stderr
        hits = json.loads(result.stdout)
        assert hits[0]["path"] == str(path) and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert hits[1]["score"] < hits[0]["score"]
        # The indexed original itself is left out by default, and kept on request.
        hits = json.loads(cli("search", "--image", str(path), "-n", "3", "--json", "-L", str(demo_library)).stdout)
        assert str(path) not in {h["path"] for h in hits}
        hits = json.loads(cli("search", "--image", str(path), "-n", "1", "--include-query", "--json",
                              "-L", str(demo_library)).stdout)
        assert hits[0]["path"] == str(path) and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_composed_query_subtracts_a_colour(demo_library):
    hits = json.loads(cli("search", "a circle", "--not", "red", "--and", "0.5:a ring", "-n", "4", "--json",
                          "-L", str(demo_library)).stdout)
    labels = [label_of(h["path"]) for h in hits]
    assert all(not label.startswith("red") for label in labels), labels
    assert all(label.endswith(("circle", "ring")) for label in labels), labels


def test_similar_and_paths_only(demo_library, demo_images):
    path = demo_images[3]
    result = cli("similar", str(path), "-n", "5", "-f", "-L", str(demo_library))
    lines = result.stdout.splitlines()
    assert len(lines) == 5 and str(path) not in lines and all(Path(p).is_file() for p in lines)
    by_id = json.loads(cli("search", "a cat", "-n", "1", "--json", "-L", str(demo_library)).stdout)[0]
    same = json.loads(cli("similar", f"id:{by_id['id']}", "-n", "5", "--json", "-L", str(demo_library)).stdout)
    assert by_id["path"] not in {h["path"] for h in same} and len(same) == 5


def test_plain_output_is_score_then_path(demo_library):
    result = cli("search", "a red circle", "-n", "3", "-L", str(demo_library))
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    score, path = lines[0].split("\t")
    assert 0 < float(score) <= 1 and Path(path).is_file()


def test_reindex_is_a_no_op(small_library):
    photos, lib = small_library
    report = json.loads(cli("index", str(photos), "-L", str(lib), "--json").stdout)
    assert (report["added"], report["updated"], report["unchanged"], report["removed"]) == (0, 0, 12, 0)


def test_deleted_file_disappears(small_library):
    photos, lib = small_library
    victim = sorted(photos.iterdir())[0]
    victim.unlink()
    report = json.loads(cli("index", str(photos), "-L", str(lib), "--json").stdout)
    assert report["removed"] == 1 and report["unchanged"] == 11
    hits = json.loads(cli("search", f"a {label_of(str(victim))}", "-n", "20", "--json", "-L", str(lib)).stdout)
    assert str(victim) not in {h["path"] for h in hits} and len(hits) == 11
    info = json.loads(cli("info", "--json", "-L", str(lib)).stdout)
    assert info["images"] == 11 and info["vectors"] == 11


def test_changed_file_is_re_embedded(small_library, tmp_path):
    photos, lib = small_library
    target = next(p for p in sorted(photos.iterdir()) if "red" not in p.name)
    # Overwrite it with a red circle; the file keeps its old (now misleading) name.
    import random
    scene = demoworld.random_scene(random.Random(5), "red", "circle", (200, 200))
    demoworld.render(scene).save(target, "PNG")
    os.utime(target, ns=(10**9, 10**9))
    report = json.loads(cli("index", str(photos), "-L", str(lib), "--json").stdout)
    assert report["updated"] == 1 and report["unchanged"] == 11
    # Its stored vector is the new content's: a copy kept outside the library finds it at 1.0.
    outside = tmp_path / "outside.png"
    shutil.copy(target, outside)
    hits = json.loads(cli("search", "--image", str(outside), "-n", "1", "--json", "-L", str(lib)).stdout)
    assert hits[0]["path"] == str(target) and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    red = json.loads(cli("search", "a red circle", "-n", "3", "--json", "-L", str(lib)).stdout)
    assert str(target) in {h["path"] for h in red}


def test_a_different_model_is_refused(small_library):
    photos, lib = small_library
    result = cli("index", str(photos), "-L", str(lib), "--model", "ViT-B-32/random")
    assert result.exit_code == 1
    assert "built with demo, not ViT-B-32/random" in result.stderr


def test_info_json(small_library):
    _, lib = small_library
    info = json.loads(cli("info", "--json", "-L", str(lib)).stdout)
    assert {k: info[k] for k in ("images", "vectors", "errors", "model", "dim")} == {
        "images": 12, "vectors": 12, "errors": 0, "model": "demo", "dim": 64}
    assert info["library"] == str(lib)


def test_broken_files_are_skipped_and_listed(small_library):
    photos, lib = small_library
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (photos / "zero.png").write_bytes(b"")
    result = cli("index", str(photos), "-L", str(lib))
    assert result.exit_code == 0
    assert "skipping" in result.stderr and "errors 2" in result.stderr
    listed = json.loads(cli("errors", "--json", "-L", str(lib)).stdout)
    reasons = {Path(e["path"]).name: e["reason"] for e in listed}
    assert reasons.keys() == {"broken.jpg", "zero.png"}
    assert reasons["broken.jpg"].startswith("broken image") and reasons["zero.png"] == "empty file"


@pytest.mark.parametrize("args, code, message", [
    (["search", ""], 2, "the query text is empty"),
    (["search", "  "], 2, "the query text is empty"),
    (["classify", "id:1"], 2, "give --labels SET_OR_FILE or --classifier NAME"),
    (["classify", "id:1", "-l", "demo-shapes", "-c", "pets"], 2, "give --labels or --classifier, not both"),
    (["search", "a cat", "--not", "0:people"], 1, "how hard it pushes away"),
    (["search", "a cat", "--and", "0:a dog"], 1, "use --not to subtract a term"),
    (["search", "--image", "{tmp}/notes.png"], 1, "cannot use"),
    (["search", "--image", "{tmp}/absent.png"], 1, "image not found"),
    (["index", "{tmp}/absent"], 1, "no such file or folder"),
    (["index", "{tmp}/empty"], 1, "no image files found"),
    (["search"], 2, "give a text query"),
    (["search", "a cat", "--not", "a cat"], 1, "cancel each other out"),
    (["search", "a cat", "--ext", "j*g"], 1, "not a file extension"),
    (["similar", "id:999999"], 1, "no indexed image has id 999999"),
    (["similar", "{tmp}/absent.png"], 1, "no such image file or id"),
    (["search", "a cat", "-n", "0"], 2, ""),
])
def test_bad_input_gets_one_clear_line(small_library, tmp_path, args, code, message):
    _, lib = small_library
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.png").write_text("not an image")
    result = cli(*[a.format(tmp=tmp_path) for a in args], "-L", str(lib))
    assert result.exit_code == code, result.stderr
    assert message in result.stderr


def test_search_without_a_library_says_how_to_make_one(tmp_path):
    result = cli("search", "a cat", "-L", str(tmp_path / "none"))
    assert result.exit_code == 1 and "clipsearch index" in result.stderr


def test_missing_weights_fail_fast_with_advice(tmp_path):
    photos = tmp_path / "photos"
    demoworld.write_images(photos, 2, size_range=(64, 64))
    result = run_cli("index", str(photos), "-L", str(tmp_path / "lib"), "--model", "ViT-B-32/laion2b_s34b_b79k",
                     env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "not on this machine" in result.stderr and "--model demo" in result.stderr


def test_the_installed_command_runs_end_to_end(tmp_path, demo_images):
    """The console script itself, in fresh processes: index, then a text and an image search."""
    exe = shutil.which("clipsearch", path=str(Path(sys.executable).parent))
    assert exe, "the clipsearch console script is not installed"
    lib = tmp_path / "lib"
    env = {**os.environ, "CLIPSEARCH_LIBRARY": str(lib)}
    subprocess.run([exe, "index", str(demo_images[0].parent), "--model", "demo", "-q"], env=env, check=True)
    out = subprocess.run([exe, "search", "a green ring", "-n", "1"], env=env, capture_output=True, text=True,
                         check=True)
    assert label_of(out.stdout.split("\t")[1].strip()) == "green ring"
    out = subprocess.run([exe, "search", "--image", str(demo_images[5]), "-n", "1", "--include-query"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split("\t")[1].strip() == str(demo_images[5])


def run_counting_torch(argv: list[str]) -> tuple[str, bool]:
    """Run the CLI in a fresh interpreter: its stdout, and whether it imported torch."""
    code = ("import sys\nsys.argv = %r\nfrom clipsearch.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')" % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    *lines, flag = out.stdout.strip().splitlines()
    return "\n".join(lines), flag == "TORCH"


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"], ["info", "-L", "{lib}"],
                                  ["errors", "-L", "{lib}"], ["similar", "id:1", "-L", "{lib}"],
                                  ["duplicates", "-L", "{lib}"], ["tags", "-L", "{lib}"], ["labels"],
                                  ["labels", "photos"], ["tag", "export", "csv", "-L", "{lib}"]])
def test_cheap_commands_never_import_torch(small_library, args):
    _, lib = small_library
    _, imported = run_counting_torch(["clipsearch"] + [a.format(lib=lib) for a in args])
    assert not imported


def test_a_repeated_search_text_needs_no_model(small_library):
    _, lib = small_library
    argv = ["clipsearch", "search", "a purple cross", "-n", "3", "-L", str(lib)]
    first, imported = run_counting_torch(argv)
    assert imported and first.count("\n") == 2
    again, imported = run_counting_torch(argv)  # its embedding comes from the library's cache
    assert not imported and again == first


def test_models_lists_tags():
    result = cli("models", "ViT-B-32", "--json")
    assert "laion2b_s34b_b79k" in json.loads(result.stdout)["ViT-B-32"]
    result = cli("models", "ViT-B-99")
    assert result.exit_code == 1 and "did you mean" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file; see the worker-level test below")
def test_an_unreadable_file_is_recorded_and_the_run_goes_on(tmp_path):
    photos = tmp_path / "photos"
    demoworld.write_images(photos, 3, size_range=(64, 96))
    locked = sorted(photos.iterdir())[0]
    locked.chmod(0o000)
    try:
        result = cli("index", str(photos), "-L", str(tmp_path / "lib"), "--model", "demo", "--json")
    finally:
        locked.chmod(0o644)
    report = json.loads(result.stdout)
    assert report["added"] == 2
    assert report["errors"] == [{"path": str(locked), "reason": "cannot read file: Permission denied"}]


def test_a_permission_error_in_a_decode_worker_is_reported_as_the_reason(tmp_path, monkeypatch):
    """The worker's own loop, run in a thread so the refused read can be arranged even as root."""
    import multiprocessing
    import threading

    from clipsearch.decodepool import DecodeLimits, _worker_main

    locked = tmp_path / "locked.jpg"
    locked.write_bytes(b"x")
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")) if self == locked else real(self))
    ours, theirs = multiprocessing.Pipe()
    worker = threading.Thread(target=_worker_main, args=(theirs, DecodeLimits(memory_mb=None)))
    worker.start()
    assert ours.recv() == ("ready", None)
    ours.send((7, str(locked)))
    assert ours.recv() == ("error", 7, "cannot read file: Permission denied")
    ours.send(None)
    worker.join(10)


def test_the_python_api_works_from_a_script_on_stdin(tmp_path):
    """Decode workers are spawned processes; a parent whose __main__ is '<stdin>' must not break them."""
    photos = tmp_path / "photos"
    demoworld.write_images(photos, 3, size_range=(64, 96))
    script = (f"from clipsearch import Library\n"
              f"with Library.open({str(tmp_path / 'lib')!r}, model='demo') as lib:\n"
              f"    print(lib.index([{str(photos)!r}]).added)\n")
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


def test_duplicates_lists_a_copy_as_a_group(small_library):
    photos, lib = small_library
    original = sorted(photos.iterdir())[0]
    copy = photos / "copy.png"
    shutil.copy(original, copy)
    cli("index", str(photos), "-L", str(lib), "-q")
    result = cli("duplicates", "-t", "0.9999", "-L", str(lib))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# group 1: 2 images")
    assert {line.split("\t")[1] for line in lines[1:3]} == {str(original), str(copy)}
    groups = json.loads(cli("duplicates", "-t", "0.9999", "--json", "-L", str(lib)).stdout)
    assert len(groups) == 1 and groups[0]["score"] == pytest.approx(1.0, abs=1e-5)


# -- query terms, usage and messages -----------------------------------------------------

def test_an_image_by_id_and_by_a_winding_path_is_the_indexed_image(demo_library, demo_images):
    lib = str(demo_library)
    path = demo_images[5]
    itself = json.loads(cli("search", "--image", str(path), "-n", "1", "--include-query", "--json", "-L", lib).stdout)
    by_path = json.loads(cli("search", "--image", str(path), "-n", "5", "--json", "-L", lib).stdout)
    result = cli("search", "--image", f"id:{itself[0]['id']}", "-n", "5", "--json", "-L", lib)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == by_path and itself[0]["id"] not in {h["id"] for h in by_path}
    winding = f"{path.parent}/../{path.parent.name}/./{path.name}"
    similar = cli("similar", winding, "-n", "5", "--json", "-L", lib)
    assert similar.exit_code == 0, similar.stderr
    assert similar.stdout == cli("similar", str(path), "-n", "5", "--json", "-L", lib).stdout
    assert json.loads(similar.stdout) == by_path  # the stored vector, the image itself left out


def test_a_library_path_that_is_a_file_is_called_a_file(small_library, tmp_path):
    photos, _ = small_library
    file = tmp_path / "library.txt"
    file.write_text("not a library")
    for args in (["info"], ["search", "a cat"], ["index", str(photos), "--model", "demo"], ["move-db", "sqlite"]):
        result = cli(*args, "-L", str(file))
        assert result.exit_code == 1, (args, result.stderr)
        assert result.stderr.startswith(f"error: the library path {file} is a file, not a folder\n"), result.stderr
        assert "moving" not in result.stderr
    assert file.read_text() == "not a library"


def test_version_is_the_package_version_and_needs_no_torch():
    import importlib.metadata

    import clipsearch

    out, imported = run_counting_torch(["clipsearch", "--version"])
    assert out == f"clipsearch {clipsearch.__version__}" and not imported
    assert importlib.metadata.version("clipsearch") == clipsearch.__version__


def test_a_misspelt_model_name_suggests_the_right_one(tmp_path):
    photos = tmp_path / "photos"
    demoworld.write_images(photos, 1, size_range=(64, 64))
    result = cli("index", str(photos), "-L", str(tmp_path / "lib"), "--model", "dmeo")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["error: unknown model 'dmeo'", "hint: did you mean demo?"]
    assert "did you mean demo?" in cli("models", "dmeo").stderr
    assert json.loads(cli("models", "demo", "--json").stdout) == {"demo": ["(bundled tiny model of coloured shapes)"]}


def test_messages_stay_whole_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch):
    # rich wraps at $COLUMNS (else 80) where stderr is not a terminal, as in a log file.
    monkeypatch.setenv("COLUMNS", "40")
    photos = tmp_path / ("a-folder-with-a-long-name-" * 3) / "photos"
    [(first, _)] = demoworld.write_images(photos, 1, size_range=(64, 64))
    broken = photos / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    lib = str(tmp_path / ("a-library-with-a-long-name-" * 3))
    lines = cli("index", str(photos), "-L", lib, "--model", "demo").stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"skipping {broken}: not an image"), lines
    assert re.fullmatch(r"added 1, updated 0, moved 0, unchanged 0, removed 0, errors 1 in \d+\.\ds, "
                        r"precision fp32", lines[1]), lines
    lines = cli("tag", "--labels", "demo-colours", "-L", lib).stderr.splitlines()  # no blank progress-bar lines
    assert len(lines) == 1 and re.fullmatch(
        r"tagged 1 of 1 images with 1 tags from demo-colours \(zero-shot\) in \d+\.\ds", lines[0]), lines
    lines = cli("tag", "add", str(first), "a label with quite a few words in it", "-L", lib).stderr.splitlines()
    assert len(lines) == 1 and re.fullmatch(rf"added 'a label with quite a few words in it' to {re.escape(str(first))} "
                                            r"\(id:\d+\)", lines[0]), lines
    missing = tmp_path / ("no-library-here-" * 4)
    assert cli("info", "-L", str(missing)).stderr.splitlines() == [
        f"error: no library at {missing}", "hint: index some images first: clipsearch index PATH"]


def test_manual_tags_say_what_they_did(small_library):
    photos, lib = small_library
    path = sorted(photos.iterdir())[0]
    added = cli("tag", "add", str(path), "dog", "my dog", "-L", str(lib))
    assert added.exit_code == 0, added.stderr
    [line] = added.stderr.splitlines()
    assert re.fullmatch(rf"added 'dog', 'my dog' to {re.escape(str(path))} \(id:\d+\)", line)
    removed = cli("tag", "remove", f"id:{line.rsplit(':', 1)[1].rstrip(')')}", "dog", "-L", str(lib))
    assert removed.stderr.splitlines() == [line.replace("added 'dog', 'my dog' to", "removed 'dog' from")]
    assert [c["label"] for c in json.loads(cli("tags", "--json", "-L", str(lib)).stdout)] == ["my dog"]


def test_classify_prints_column_headers(small_library):
    photos, lib = small_library
    paths = [str(p) for p in sorted(photos.iterdir())[:2]]
    result = cli("classify", *paths, "-l", "demo-shapes", "-k", "2", "-L", str(lib))
    assert result.exit_code == 0, result.stderr
    header, first, row, _, second, _, _ = result.stdout.splitlines()  # two labels per image
    assert header.split() == ["probability", "cosine", "label"] and [first, second] == paths
    probability, cosine, label = row.split(None, 2)
    assert 0 < float(probability) <= 1 and -1 <= float(cosine) <= 1 and label in demoworld.SHAPES
    # The columns line up under the header.
    assert header.index("cosine") + len("cosine") == row.index(cosine) + len(cosine)


def test_optimize_and_info_show_sizes_and_times_in_units_and_json_keeps_the_numbers(small_library):
    _, lib = small_library
    result = cli("optimize", "--memory-budget", "512MB", "--target-recall", "0.9", "-L", str(lib))
    assert result.exit_code == 0, result.stderr
    shown = {k: v for k, _, v in (line.partition(" ") for line in result.stdout.splitlines())}
    shown = {k: v.strip() for k, v in shown.items()}
    assert shown["memory_budget"] == "512.0 MB" and shown["target_recall"] == "0.900"
    assert re.fullmatch(r"\d+\.\d KB", shown["index_bytes"]) and re.fullmatch(r"\d+\.\ds", shown["seconds"])
    raw = json.loads(cli("optimize", "--json", "-L", str(lib)).stdout)
    assert raw["memory_budget"] == 512 * 2 ** 20 and isinstance(raw["index_bytes"], int)
    assert isinstance(raw["seconds"], float)
    info = {k: v.strip() for k, _, v in (line.partition(" ") for line in cli("info", "-L", str(lib)).stdout.splitlines())}
    assert re.fullmatch(r"\d+\.\d KB", info["database_bytes"]) and info["images"] == "12"
    assert re.fullmatch(r"\d+\.\d KB", info["signature_bytes"])  # 12 signatures of 6 kB each
    assert isinstance(json.loads(cli("info", "--json", "-L", str(lib)).stdout)["database_bytes"], int)


def test_tag_reports_the_wall_time_of_the_whole_run(tmp_path, fake_encoder):
    """Embedding the labels is most of a first run; tag once said "in 0.0s" after seconds of it."""
    import time

    from PIL import Image

    from clipsearch import Library

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(photos / "red.png")
    labels = tmp_path / "colours.txt"
    labels.write_text("red\ngreen\nblue\n")
    encode = fake_encoder.encode_texts
    fake_encoder.encode_texts = lambda texts: (time.sleep(0.3), encode(texts))[1]
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([photos])
        report = lib.tag(labels, templates=["{}"])
    assert fake_encoder.texts and report.tagged == 1
    assert report.seconds >= 0.3  # the labels' embedding, which alone slept that long


def _decode_workers(pid: int) -> list[int]:
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children.update(int(c) for c in (task / "children").read_text().split())
    workers = []
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="finds the decode workers through /proc")
def test_ctrl_c_during_index_exits_130_with_one_message_and_no_traceback(tmp_path):
    from clipsearch.cli import RESUMABLE

    photos = tmp_path / "photos"
    demoworld.write_images(photos, 40, size_range=(64, 128))
    # Its own session, as a terminal's job is its own process group: Ctrl-C reaches every
    # process in it, the decode workers included.
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "index", str(photos), "-L", str(tmp_path / "lib"),
                             "--model", "demo", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=ctrl_c_as_on_a_terminal)
    try:
        # Once the workers are up (still importing, or taking files) and before the model
        # that they wait for is loaded: the run is under way and far from done.
        while len(_decode_workers(proc.pid)) < 2:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines() == [RESUMABLE], err


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="gives the command a terminal for its stderr")
def test_duplicates_shows_its_stages_on_a_terminal_and_only_there(tmp_path):
    photos = tmp_path / "photos"
    demoworld.write_duplicate_set(photos, 16, 4, seed=1, size_range=(96, 160))
    lib = tmp_path / "lib"
    assert run_cli("index", str(photos), "-L", str(lib), "--model", "demo", "-q").returncode == 0
    shutil.rmtree(lib / "pixels")  # so that it reads pixels too, as on a library from before index kept them
    ours, theirs = os.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "clipsearch.cli", "duplicates", "-L", str(lib)],
                              stdout=subprocess.PIPE, stderr=theirs, text=True, timeout=300,
                              env={**os.environ, "COLUMNS": "100"})
        os.close(theirs)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once the child's end is closed and all is read
            while chunk := os.read(ours, 65536):
                drawn += chunk
    finally:
        os.close(ours)
    assert proc.returncode == 0 and "# group 1:" in proc.stdout
    for stage in (b"finding neighbours", b"reading pixels", b"comparing pixels"):
        assert stage in drawn, drawn
    # Piped, as in a script or a log: no bars.
    piped = run_cli("duplicates", "-L", str(lib))
    assert piped.returncode == 0 and piped.stderr == "" and piped.stdout == proc.stdout
