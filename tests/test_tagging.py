"""Auto-tagging, manual tags, few-shot classifiers and tag export, on real libraries."""

import csv
import io
import json
import random
import shutil

import numpy as np
import pytest

from clipsearch import ClassifierError, Library, PathNotFoundError, demoworld
from clipsearch.labels import Label, LabelSet
from conftest import FakeEncoder, run_cli

from test_cli import cli, run_counting_torch

# -- with the demo model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """96 images from the renderer the demo model was NOT trained on, indexed."""
    root = tmp_path_factory.mktemp("tagging")
    items = demoworld.write_images(root / "photos", 96, seed=11, renderer="sdf", size_range=(64, 320))
    with Library.open(root / "lib", model="demo") as lib:
        lib.index([root / "photos"])
    return root, {str(p): scene for p, scene in items}


def _copy_library(world, tmp_path):
    root, scenes = world
    shutil.copytree(root / "lib", tmp_path / "lib")
    return tmp_path / "lib", scenes


def _tag_accuracy(lib, scenes, label_set, attribute) -> float:
    found = {}
    for t in lib.image_tags():
        if t.label_set == label_set:
            found.setdefault(t.path, []).append((t.score, t.label))
    return np.mean([max(found.get(p, [(0, None)]))[1] == getattr(s, attribute) for p, s in scenes.items()])


def test_colour_and_shape_tagging_is_as_good_as_the_model(world, tmp_path):
    lib_dir, scenes = _copy_library(world, tmp_path)
    with Library.open(lib_dir) as lib:
        colours = lib.tag("demo-colours", top_k=1, threshold=0.0)
        shapes = lib.tag("demo-shapes", top_k=1, threshold=0.0)
        assert colours.images == colours.tagged == colours.tags == 96
        assert (shapes.label_set, shapes.source, shapes.tags) == ("demo-shapes", "zero-shot", 96)
        assert _tag_accuracy(lib, scenes, "demo-colours", "colour") >= 0.9
        # The demo model tells shapes apart less well: 0.92 on this renderer (README).
        assert _tag_accuracy(lib, scenes, "demo-shapes", "shape") >= 0.85
        counts = {c.label: c.images for c in lib.tags()}
    assert sum(counts[c] for c in demoworld.COLOURS) == 96 and sum(counts[s] for s in demoworld.SHAPES) == 96


def test_thresholds_and_top_k_bound_the_tags(world, tmp_path):
    lib_dir, _ = _copy_library(world, tmp_path)
    with Library.open(lib_dir) as lib:
        two = lib.tag("demo-shapes", top_k=2, threshold=0.0, dry_run=True)
        assert two.tags == 2 * 96 and not lib.tags()  # a dry run writes nothing
        loose = lib.tag("demo-shapes", top_k=None, threshold=0.05)
        strict = lib.tag("demo-shapes", top_k=None, threshold=0.95)
        tags = lib.image_tags()
    assert loose.tags > 96 > strict.tags > 0
    assert len(tags) == strict.tags and min(t.score for t in tags) >= 0.95  # the re-run replaced the loose tags


def test_classify_ranks_labels_for_images_inside_and_outside_the_library(world, tmp_path):
    root, scenes = world
    path, scene = next(iter(scenes.items()))
    outside = tmp_path / "copy.png"
    shutil.copy(path, outside)
    with Library.open(root / "lib") as lib:
        inside, fresh, by_id = lib.classify([path, outside, "id:1"], "demo-colours", top_k=3)
    assert inside.id is not None and fresh.id is None and by_id.id == 1
    assert inside.labels[0].label == fresh.labels[0].label == scene.colour
    assert len(inside.labels) == 3 and inside.labels[0].probability > inside.labels[1].probability
    # The same picture gives the same answer whether its vector is stored or freshly made.
    assert abs(inside.labels[0].cosine - fresh.labels[0].cosine) < 0.01


def test_a_label_set_is_embedded_once_per_model_and_template_list(world, tmp_path):
    lib_dir, _ = _copy_library(world, tmp_path)
    shutil.rmtree(lib_dir / "labels", ignore_errors=True)  # left by other tests' runs
    argv = ["clipsearch", "tag", "--labels", "demo-colours", "-L", str(lib_dir), "-q"]
    _, imported = run_counting_torch(argv)
    assert imported  # the first run embeds the labels with the text tower
    _, imported = run_counting_torch(argv)
    assert not imported  # the second reads the cached label index: no model at all
    _, imported = run_counting_torch(argv + ["--template", "a {} thing"])
    assert imported  # other templates are another label index
    assert len(list((lib_dir / "labels").glob("*.faiss"))) == 2


def test_few_shot_from_five_examples_per_class_matches_or_beats_zero_shot(tmp_path):
    examples, held_out = tmp_path / "examples", tmp_path / "held_out"
    for shape in demoworld.SHAPES:
        for folder, count, seed in ((examples, 5, 1), (held_out, 24, 2)):
            (folder / shape).mkdir(parents=True)
            for colour_i in range(count):
                colour = list(demoworld.COLOURS)[colour_i % len(demoworld.COLOURS)]
                rng = random.Random(seed * 1000 + colour_i * 10 + demoworld.SHAPES.index(shape))
                scene = demoworld.random_scene(rng, colour, shape, (64, 256))
                demoworld.render(scene, "sdf").save(folder / shape / f"{colour_i}.png")
    with Library.open(tmp_path / "lib", model="demo") as lib:
        report = lib.train_classifier("shapes", examples, "demo-shapes")
        assert (report.examples, report.shots, report.folds) == (30, {s: 5 for s in sorted(demoworld.SHAPES)}, 5)
        assert report.cv_accuracy >= report.zero_shot_accuracy
        files = sorted(held_out.rglob("*.png"))
        truth = [f.parent.name for f in files]
        zero = [r.labels[0].label for r in lib.classify(files, "demo-shapes", top_k=1)]
        few = [r.labels[0].label for r in lib.classify(files, classifier="shapes", top_k=1)]
        assert [c.name for c in lib.classifiers()] == ["shapes"]
    zero_acc = np.mean([a == b for a, b in zip(zero, truth)])
    few_acc = np.mean([a == b for a, b in zip(few, truth)])
    assert few_acc >= zero_acc and few_acc >= 0.85


def test_five_examples_teach_labels_whose_words_mean_nothing_to_the_model(tmp_path):
    # Zero-shot cannot know what "zorp" looks like; the probe learns it from the vectors.
    names = dict(zip(demoworld.SHAPES, ["zorp", "quib", "flenn", "dax", "wug", "blick"]))
    held = []
    for folder, count, seed in ((tmp_path / "examples", 5, 1), (tmp_path / "held_out", 24, 2)):
        rng = random.Random(seed)
        for shape, name in names.items():
            (folder / name).mkdir(parents=True)
            for i in range(count):
                scene = demoworld.random_scene(rng, list(demoworld.COLOURS)[i % 8], shape, (64, 256))
                demoworld.render(scene, "sdf").save(folder / name / f"{i}.png")
                held += [(folder / name / f"{i}.png", name)] if folder.name == "held_out" else []
    with Library.open(tmp_path / "lib", model="demo") as lib:
        report = lib.train_classifier("nonsense", tmp_path / "examples")
        files, truth = [p for p, _ in held], [t for _, t in held]
        labels = LabelSet("nonsense", tuple(Label(n) for n in sorted(names.values())))
        zero = [r.labels[0].label for r in lib.classify(files, labels, top_k=1)]
        few = [r.labels[0].label for r in lib.classify(files, classifier="nonsense", top_k=1)]
    assert report.regularisation is not None and report.zero_shot_accuracy < 0.4 < 0.6 < report.cv_accuracy
    assert np.mean([a == b for a, b in zip(zero, truth)]) < 0.4
    assert np.mean([a == b for a, b in zip(few, truth)]) >= 0.75


def test_a_classifier_tags_the_library_under_its_own_name(world, tmp_path):
    lib_dir, scenes = _copy_library(world, tmp_path)
    examples = tmp_path / "examples"
    for path, scene in list(scenes.items())[:48]:
        (examples / scene.colour).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, examples / scene.colour)
    with Library.open(lib_dir) as lib:
        lib.train_classifier("colours", examples, templates=["{}"])
        report = lib.tag(classifier="colours", top_k=1)
        assert (report.source, report.label_set, report.tagged) == ("few-shot", "colours", 96)
        assert _tag_accuracy(lib, scenes, "colours", "colour") >= 0.9
        with pytest.raises(ClassifierError, match="no classifier called 'nope'"):
            lib.tag(classifier="nope")
        lib.remove_classifier("colours")
        assert not lib.classifiers()


def test_cli_tag_then_search_by_tag_and_text(world, tmp_path):
    lib_dir, scenes = _copy_library(world, tmp_path)
    result = cli("tag", "--labels", "demo-colours", "--top-k", "1", "--json", "-L", str(lib_dir))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["tagged"] == 96
    assert cli("tag", "-l", "demo-shapes", "-k", "1", "-q", "-L", str(lib_dir)).exit_code == 0
    hits = json.loads(cli("search", "a circle", "--tag", "red", "-n", "50", "--json", "-L", str(lib_dir)).stdout)
    assert hits and all(scenes[h["path"]].colour == "red" for h in hits)
    assert scenes[hits[0]["path"]].shape == "circle"
    both = json.loads(cli("search", "a shape", "--tag", "red", "--tag", "circle", "-n", "50", "--json",
                          "-L", str(lib_dir)).stdout)
    assert both and len(both) < len(hits) and {h["path"] for h in both} <= {h["path"] for h in hits}
    rest = json.loads(cli("search", "a shape", "--tag", "red", "--no-tag", "circle", "-n", "50", "--json",
                          "-L", str(lib_dir)).stdout)
    assert len(rest) + len(both) == len(hits) and not {h["path"] for h in rest} & {h["path"] for h in both}
    counts = json.loads(cli("tags", "--json", "-L", str(lib_dir)).stdout)
    assert sum(c["images"] for c in counts) == 2 * 96 and counts[0]["sources"] == ["zero-shot"]


def test_cli_classify_json_and_a_broken_file(world, tmp_path):
    root, scenes = world
    path, scene = next(iter(scenes.items()))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    result = cli("classify", path, str(broken), "-l", "demo-shapes", "-k", "2", "--json", "-L", str(root / "lib"))
    assert result.exit_code == 1 and "skipping" in result.stderr and "broken.jpg" in result.stderr
    good, bad = json.loads(result.stdout)
    assert good["labels"][0]["label"] in demoworld.SHAPES and len(good["labels"]) == 2
    assert bad["labels"] == [] and bad["error"]


@pytest.mark.parametrize("args,message", [
    (["tag", "-L", "{lib}"], "--labels"),
    (["tag", "-l", "nope", "-L", "{lib}"], "no label set or label file called 'nope'"),
    (["tag", "-l", "demo-shapes", "-t", "no placeholder", "-L", "{lib}"], "has no {}"),
    (["classify", "{tmp}/absent.png", "-l", "demo-shapes", "-L", "{lib}"], "image not found"),
    (["tag", "add", "{tmp}/absent.png", "dog", "-L", "{lib}"], "not an indexed image"),
    (["classifier", "train", "x", "--examples", "{tmp}", "-L", "{lib}"], "at least two sub-folders"),
])
def test_tagging_mistakes_get_one_clear_line(world, tmp_path, args, message):
    root, _ = world
    result = cli(*[a.format(lib=root / "lib", tmp=tmp_path) for a in args])
    assert result.exit_code in (1, 2) and message in result.stderr and "Traceback" not in result.stderr


# -- manual tags, re-runs and the store's semantics (fake encoder) ------------------------------

@pytest.fixture
def tagged(tmp_path):
    """Six images (two each red, green, blue), tagged by colour with the fake encoder."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    colours = {"red": (250, 0, 0), "green": (0, 250, 0), "blue": (0, 0, 250)}
    for name, rgb in colours.items():
        for n in range(2):
            Image.new("RGB", (16, 16), rgb).save(photos / f"{name}{n}.png")
    lib = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    lib.index([photos])
    rgb = LabelSet("rgb", tuple(Label(c) for c in colours), templates=("{}",))
    lib.tag(rgb, threshold=0.5)
    yield lib, photos, rgb
    lib.close()


def _labels_of(lib, path):
    return sorted(t.label for t in lib.image_tags() if t.path == str(path))


def test_manual_tags_win_and_survive_re_tagging(tagged):
    lib, photos, rgb = tagged
    assert _labels_of(lib, photos / "red0.png") == ["red"]
    lib.add_tag(photos / "red0.png", "favourite")
    lib.remove_tag(photos / "red0.png", "red")
    assert _labels_of(lib, photos / "red0.png") == ["favourite"]
    lib.tag(rgb, threshold=0.5)  # re-running does not bring "red" back
    assert _labels_of(lib, photos / "red0.png") == ["favourite"]
    assert [h.path for h in lib.search("red", k=6, tags=["red"])] == [str(photos / "red1.png")]
    lib.add_tag(photos / "red0.png", "red")  # until the user puts it back
    assert _labels_of(lib, photos / "red0.png") == ["favourite", "red"]
    sources = {t.label: t.source for t in lib.image_tags() if t.path == str(photos / "red0.png")}
    assert sources == {"favourite": "manual", "red": "manual"}


def test_a_re_run_replaces_only_its_own_label_set(tagged):
    lib, photos, rgb = tagged
    other = LabelSet("warm", (Label("red"), Label("green")), templates=("{}",))
    lib.tag(other, threshold=0.5)
    before = {(t.path, t.label_set) for t in lib.image_tags()}
    lib.tag(rgb, threshold=0.999, top_k=1)
    after = lib.image_tags()
    assert {t.label_set for t in after} == {"rgb", "warm"}
    assert {(t.path, t.label_set) for t in after if t.label_set == "warm"} == \
        {pair for pair in before if pair[1] == "warm"}


def test_tagging_one_folder_leaves_the_others(tagged, tmp_path):
    lib, photos, rgb = tagged
    (photos / "sub").mkdir()
    shutil.copy(photos / "blue0.png", photos / "sub" / "blue_copy.png")
    lib.index([photos])
    few = LabelSet("rgb", (Label("green"),), templates=("{}",))
    report = lib.tag(few, folders=[photos / "sub"], threshold=0.0)
    assert report.images == 1
    assert _labels_of(lib, photos / "sub" / "blue_copy.png") == ["green"]
    assert _labels_of(lib, photos / "blue0.png") == ["blue"]


def test_changed_images_lose_automatic_tags_and_deleted_ones_all_tags(tagged):
    from PIL import Image

    lib, photos, rgb = tagged
    lib.add_tag(photos / "green0.png", "mine")
    Image.new("RGB", (16, 16), (0, 0, 250)).save(photos / "green0.png")  # now blue
    (photos / "red1.png").unlink()
    lib.index([photos])
    assert _labels_of(lib, photos / "green0.png") == ["mine"]  # stale "green" is gone, manual stays
    assert not _labels_of(lib, photos / "red1.png")
    lib.tag(rgb, threshold=0.5)
    assert _labels_of(lib, photos / "green0.png") == ["blue", "mine"]


def test_export_csv_and_json(tagged, tmp_path):
    lib, photos, _ = tagged
    lib_dir = lib.root
    rows = list(csv.DictReader(io.StringIO(cli("tag", "export", "csv", "-L", str(lib_dir)).stdout)))
    assert len(rows) == 6 and {r["label"] for r in rows} == {"red", "green", "blue"}
    assert all(r["source"] == "zero-shot" and r["label_set"] == "rgb" and float(r["score"]) > 0.5 for r in rows)
    out = tmp_path / "tags.json"
    assert cli("tag", "export", "json", "-o", str(out), "-L", str(lib_dir)).exit_code == 0
    assert sorted((t["path"], t["label"]) for t in json.loads(out.read_text())) == \
        sorted((r["path"], r["label"]) for r in rows)


def test_tagging_an_unindexed_file_by_hand_is_refused(tagged, tmp_path):
    lib, _, _ = tagged
    with pytest.raises(PathNotFoundError):
        lib.add_tag(tmp_path / "elsewhere.png", "x")


# -- XMP sidecars --------------------------------------------------------------------------

def _read_xmp(path):
    import pyexiv2

    img = pyexiv2.Image(str(path))
    try:
        return img.read_xmp()
    finally:
        img.close()


EXISTING = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\r
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="darktable">\r
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\r
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"\r
    xmlns:darktable="http://darktable.sf.net/" xmlns:dc="http://purl.org/dc/elements/1.1/"\r
    xmp:Rating="4" darktable:history_end="3">\r
   <dc:subject>\r
    <rdf:Bag>\r
     <rdf:li>holiday</rdf:li>\r
    </rdf:Bag>\r
   </dc:subject>\r
  </rdf:Description>\r
 </rdf:RDF>\r
</x:xmpmeta>\r
<?xpacket end="w"?>\r
"""


def test_xmp_sidecars_round_trip_through_a_real_xmp_parser(tagged):
    lib, photos, _ = tagged
    lib.add_tag(photos / "red0.png", "café & crème")
    dry = lib.write_xmp(dry_run=True)
    assert (dry.created, dry.keywords) == (6, 7) and not list(photos.glob("*.xmp"))
    report = lib.write_xmp()
    assert (report.created, report.updated, report.keywords, report.errors) == (6, 0, 7, [])
    assert _read_xmp(photos / "red0.png.xmp")["Xmp.dc.subject"] == ["café & crème", "red"]
    assert _read_xmp(photos / "blue1.png.xmp")["Xmp.dc.subject"] == ["blue"]
    again = lib.write_xmp()
    assert (again.created, again.updated, again.unchanged) == (0, 0, 6)
    lightroom = lib.write_xmp(style="lightroom")
    assert lightroom.created == 6 and _read_xmp(photos / "green1.xmp")["Xmp.dc.subject"] == ["green"]


def test_an_existing_sidecar_is_merged_not_clobbered(tagged):
    lib, photos, _ = tagged
    sidecar = photos / "blue0.png.xmp"
    sidecar.write_bytes(EXISTING.encode())
    broken = photos / "green0.png.xmp"
    broken.write_text("<x:xmpmeta>not closed")
    report = lib.write_xmp()
    assert (report.updated, report.created) == (1, 4) and [e.path for e in report.errors] == [str(broken)]
    assert broken.read_text() == "<x:xmpmeta>not closed"  # left exactly as it was
    xmp = _read_xmp(sidecar)
    assert xmp["Xmp.dc.subject"] == ["holiday", "blue"] and xmp["Xmp.xmp.Rating"] == "4"
    assert xmp["Xmp.darktable.history_end"] == "3"
    merged = sidecar.read_bytes().decode()
    # Every byte of the old file is still there, in order: only the new keyword was added.
    assert merged.replace("     <rdf:li>blue</rdf:li>\r\n", "", 1) == EXISTING or \
        merged.replace("     <rdf:li>blue</rdf:li>\n", "", 1) == EXISTING
    assert "\r\n" in merged


def test_cli_exports_xmp_with_a_dry_run(tagged):
    lib, photos, _ = tagged
    result = run_cli("tag", "export", "xmp", "--dry-run", "--json", "-L", str(lib.root))
    assert result.returncode == 0 and json.loads(result.stdout)["created"] == 6
    assert not list(photos.glob("*.xmp"))
    result = run_cli("tag", "export", "xmp", "--sidecar-style", "lightroom", "-L", str(lib.root))
    assert result.returncode == 0 and "6 new sidecars" in result.stdout
    assert len(list(photos.glob("*.xmp"))) == 6
