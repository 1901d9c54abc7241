"""clipsearch eval and matrix: accuracy against an independent count, template ranking,
few-shot curves and the plots, on the demo model with generated labelled folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from clipsearch import ClassifierError, Library, demoworld
from clipsearch.encoder import Encoder
from clipsearch.errors import InputError
from clipsearch.plots import DPI, confusion_figure, similarity_figure

from conftest import run_cli

NONSENSE = {"circle": "zorp", "cross": "quib", "ring": "blen", "square": "frax", "star": "mool", "triangle": "tresk"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """96 demo-world pictures, 16 per shape, in one sub-folder per shape."""
    root = tmp_path_factory.mktemp("shapes")
    for path, scene in demoworld.write_images(root / "raw", 96, seed=11, size_range=(64, 300)):
        (root / "labelled" / scene.shape).mkdir(parents=True, exist_ok=True)
        shutil.move(path, root / "labelled" / scene.shape / path.name)
    return root / "labelled"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    with Library.open(tmp_path_factory.mktemp("lib"), model="demo") as lib:
        yield lib


def test_accuracy_and_per_label_scores_match_an_independent_count(library, shapes):
    result = library.evaluate(shapes, "demo-shapes")
    files = sorted(p for p in shapes.rglob("*.png"))
    # Independently: classify() ranks labels per image through another code path.
    ranked = {r.path: [p.label for p in r.labels] for r in library.classify(files, "demo-shapes", top_k=5)}
    truth = {str(f): f.parent.name for f in files}
    top1 = np.mean([ranked[p][0] == truth[p] for p in truth])
    top5 = np.mean([truth[p] in ranked[p][:5] for p in truth])
    assert result.images == 96 and result.top1 == pytest.approx(top1, abs=1e-4)
    assert result.top5 == pytest.approx(top5, abs=1e-4)
    assert 0.85 <= result.top1 < 1.0  # the demo model's shape ceiling is ~0.93: some misses to show
    for score in result.classes:
        predicted_as = [p for p in truth if ranked[p][0] == score.label]
        right = sum(truth[p] == score.label for p in predicted_as)
        assert score.support == 16
        assert score.recall == pytest.approx(right / 16, abs=1e-4)
        assert score.precision == pytest.approx(right / len(predicted_as), abs=1e-4)
    misses = {(m.path, m.true, m.predicted) for m in result.misses}
    assert misses == {(p, truth[p], ranked[p][0]) for p in truth if ranked[p][0] != truth[p]}
    matrix = np.array(result.confusion)
    assert matrix.sum() == 96 and np.trace(matrix) == round(top1 * 96)
    assert sum(c.count for c in result.most_confused) == 96 - np.trace(matrix)


def test_a_bad_template_ranks_below_a_good_one(library, shapes):
    result = library.evaluate(shapes, "demo-shapes", templates=["a {}", "a purple square {}"], compare_templates=True)
    scores = {t.template: t.top1 for t in result.templates}
    assert set(scores) == {"a {}", "a purple square {}", "ensemble of 2"}
    assert scores["a {}"] > scores["a purple square {}"] + 0.2
    assert [t.template for t in result.templates][-1] == "a purple square {}"


def test_the_few_shot_curve_rises_where_words_fail(library, shapes, tmp_path):
    for shape, word in NONSENSE.items():  # labels whose words mean nothing to the model
        shutil.copytree(shapes / shape, tmp_path / word)
    result = library.evaluate(tmp_path, few_shot=8)
    curve = result.few_shot
    assert [s.shots for s in curve] == [1, 2, 4, 8]
    assert all(s.draws == 3 and s.tested == 96 - 6 * s.shots for s in curve)
    assert curve[0].zero_shot < 0.5 and curve[-1].few_shot > curve[0].few_shot + 0.3
    assert curve[-1].few_shot > curve[-1].zero_shot + 0.3
    assert result.shots_to_beat_zero_shot is not None and result.shots_to_beat_zero_shot <= 8
    with pytest.raises(ClassifierError, match="leaves no held-out image"):
        library.evaluate(tmp_path, few_shot=16)


def _model_never_loads(monkeypatch):
    def load(self, notice=None):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Encoder, "load", load)


def test_indexed_examples_use_their_stored_vectors(shapes, tmp_path, monkeypatch):
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([shapes])
        first = lib.evaluate(shapes, "demo-shapes")
    _model_never_loads(monkeypatch)  # label set cached, vectors stored
    with Library.open(tmp_path / "lib") as lib:  # a fresh process's view: nothing loaded
        again = lib.evaluate(shapes, "demo-shapes")
    assert again.to_dict() == first.to_dict()


def test_examples_outside_the_library_are_encoded_once(shapes, tmp_path, monkeypatch):
    with Library.open(tmp_path / "lib", model="demo") as lib:
        first = lib.evaluate(shapes, "demo-shapes")
        assert lib.encoder.loaded
    _model_never_loads(monkeypatch)  # all 96 come from the cache
    with Library.open(tmp_path / "lib", model="demo") as lib:
        again = lib.evaluate(shapes, "demo-shapes")
    assert again.to_dict() == first.to_dict()


def test_unreadable_examples_are_listed_and_the_rest_evaluated(library, shapes, tmp_path):
    for shape in ("circle", "ring"):
        shutil.copytree(shapes / shape, tmp_path / shape)
    (tmp_path / "ring" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = library.evaluate(tmp_path, "demo-shapes")
    assert result.images == 32 and [e.path for e in result.unreadable] == [str(tmp_path / "ring" / "broken.png")]
    assert result.labels == ["circle", "ring"]


def test_the_plots_draw_the_numbers_the_json_holds(library, shapes, tmp_path):
    result = library.evaluate(shapes, "demo-shapes")
    data = json.loads(json.dumps(result.to_dict()))
    drawn = confusion_figure(result, tmp_path / "confusion.png")
    counts = np.array(data["confusion"], float)
    assert np.allclose(drawn, counts / counts.sum(1, keepdims=True))
    with Image.open(tmp_path / "confusion.png") as im:
        assert im.size == (round((0.45 * 6 + 2.5 + 1.2) * DPI), round((0.45 * 6 + 2.5) * DPI))

    files = [sorted((shapes / s).iterdir())[0] for s in ("circle", "star", "ring")]
    matrix = library.similarity_matrix(files, "demo-shapes")
    assert matrix.labels == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert [int(np.argmax(row)) for row in matrix.cosine] == [0, 3, 5]  # each picture nearest its own shape
    drawn = similarity_figure(matrix, tmp_path / "matrix.png")
    assert np.allclose(drawn, np.array(json.loads(json.dumps(matrix.to_dict()))["cosine"]).T)
    with Image.open(tmp_path / "matrix.png") as im:
        assert im.size == (round((0.7 * 3 + 2.5) * DPI), round((0.7 * 7.1 + 1.0) * DPI))
        # The thumbnails are drawn: the strip above the matrix is not blank.
        assert np.asarray(im.convert("L")).std() > 20
    with pytest.raises(InputError, match="cannot tell a picture format"):
        similarity_figure(matrix, tmp_path / "matrix.bmpx")


def test_the_cli_evaluates_compares_and_plots(shapes, tmp_path):
    lib = str(tmp_path / "lib")
    done = run_cli("eval", "--examples", str(shapes), "--labels", "demo-shapes", "--template", "a {}",
                   "--template", "a purple square {}", "--compare-templates", "--plot", str(tmp_path / "c.png"),
                   "-L", lib, "--model", "demo", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["images"] == 96 and len(data["templates"]) == 3 and (tmp_path / "c.png").stat().st_size > 10_000
    text = run_cli("eval", "--examples", str(shapes), "-L", lib, "--model", "demo", env={"COLUMNS": "200"})
    assert text.returncode == 0 and "top-1" in text.stdout and "precision  recall  support" in text.stdout
    bad = run_cli("eval", "--examples", str(shapes), "--classifier", "nope", "--few-shot", "2", "-L", lib,
                  "--model", "demo")
    assert bad.returncode == 1 and "evaluate label sets, not a trained classifier" in bad.stderr

    files = [str(sorted((shapes / s).iterdir())[0]) for s in ("circle", "star")]
    shown = run_cli("matrix", *files, "--labels", "demo-shapes", "--plot", str(tmp_path / "m.png"), "-L", lib,
                    "--model", "demo")
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split("\t") == ["image", "circle", "square", "triangle", "star", "cross", "ring"]
    assert [r.split("\t")[0] for r in rows] == files and (tmp_path / "m.png").is_file()
