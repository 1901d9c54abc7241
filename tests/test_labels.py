"""Label sets, prompt templates, classifier heads and the few-shot probe, without a model."""

import numpy as np
import pytest

from clipsearch.classifier import FEW_SHOT, ZERO_SHOT, Head, train_probe
from clipsearch.errors import LabelError
from clipsearch.labels import LabelSet, available_label_sets, resolve_templates

# -- label sets -------------------------------------------------------------------------


def test_bundled_label_sets_load_with_their_sizes():
    sets = {name: LabelSet.load(name) for name in available_label_sets()}
    assert {"imagenet", "coco", "photos", "demo-colours", "demo-shapes"} <= set(sets)
    assert len(sets["imagenet"].labels) == 1000 and sets["imagenet"].names[:2] == ["tench", "goldfish"]
    assert len(sets["coco"].labels) == 80
    assert 200 <= len(sets["photos"].labels) <= 400
    assert sets["demo-colours"].names == ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    assert sets["demo-shapes"].templates  # the demo sets bring templates that fit the demo model's captions


def test_the_photo_set_is_a_hierarchy():
    photos = LabelSet.load("photos")
    assert photos.ancestors("golden retriever") == ["dog", "animal"]
    assert all(photos.ancestors(label)[-1] in {"scene", "event", "animal", "food", "vehicle", "object", "plant",
                                               "weather", "time of day", "activity", "document", "people"}
               for label in photos.names)


def test_a_text_label_file_skips_comments_and_blank_lines(tmp_path):
    f = tmp_path / "pets.txt"
    f.write_text("# my pets\ncat\n\n  dog  \n# the end\n")
    pets = LabelSet.load(f)
    assert (pets.name, pets.names, pets.templates) == ("pets", ["cat", "dog"], ())


YAML = """
name: pets
templates: ["a photo of my {}."]
labels:
  animal:
  dog: {parent: animal, synonyms: [puppy, doggy]}
  golden retriever: {parent: dog, threshold: 0.3}
  cat: {parent: pet}
  screenshot: {prompts: ["a screenshot of a phone screen."]}
"""

TOML = """
name = "pets"
templates = ["a photo of my {}."]
[labels.animal]
[labels.dog]
parent = "animal"
synonyms = ["puppy", "doggy"]
[labels."golden retriever"]
parent = "dog"
threshold = 0.3
[labels.cat]
parent = "pet"
[labels.screenshot]
prompts = ["a screenshot of a phone screen."]
"""


@pytest.mark.parametrize("suffix,text", [(".yaml", YAML), (".toml", TOML)])
def test_structured_label_files_give_synonyms_prompts_thresholds_and_parents(tmp_path, suffix, text):
    f = tmp_path / ("mine" + suffix)
    f.write_text(text)
    pets = LabelSet.load(f)
    assert pets.name == "pets" and pets.templates == ("a photo of my {}.",)
    assert pets.names == ["animal", "dog", "golden retriever", "cat", "screenshot"]
    assert pets.ancestors("golden retriever") == ["dog", "animal"]
    assert pets.ancestors("cat") == ["pet"]  # a parent that is not a label is implied only
    assert pets.labels[2].threshold == 0.3
    texts, owners = pets.prompts(("a photo of my {}.", "{}"))
    assert texts[owners.index(1):owners.index(1) + 6] == [
        "a photo of my dog.", "dog", "a photo of my puppy.", "puppy", "a photo of my doggy.", "doggy"]
    assert texts[-1] == "a screenshot of a phone screen." and owners[-1] == 4
    assert pets.key(("{}",), "demo") != pets.key(("{} x",), "demo") != pets.key(("{}",), "other")


@pytest.mark.parametrize("text,message", [
    ("labels:\n  a:\n  a:\n", "twice|duplicate"),
    ("labels:\n  a: {parent: b}\n  b: {parent: a}\n", "cycle"),
    ("labels:\n  a: {colour: red}\n", "unknown options"),
    ("labels:\n  a: {threshold: 2}\n", "probability"),
    ("labels: [\n", "not valid YAML"),
    ("name: x\n", "no 'labels'"),
])
def test_bad_label_files_get_a_clear_error(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(LabelError, match=message):
        LabelSet.load(f)


def test_an_unknown_label_set_names_the_bundled_ones():
    with pytest.raises(LabelError) as exc:
        LabelSet.load("no-such-set")
    assert "imagenet" in exc.value.hint


def test_templates_come_from_bundled_sets_and_literals():
    assert len(resolve_templates(["imagenet"])) == 80
    assert resolve_templates(["simple", "a {} here", "a photo of a {}."]) == ("a photo of a {}.", "a {} here")
    with pytest.raises(LabelError, match="no \\{\\}"):
        resolve_templates(["a photo of a dog"])


# -- heads ------------------------------------------------------------------------------

def _random_head(rng, n_labels=12, dim=16, parents=None, thresholds=None, bias=False):
    w = rng.standard_normal((n_labels, dim)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    b = rng.standard_normal(n_labels).astype(np.float32) if bias else np.zeros(n_labels, np.float32)
    return Head("set", ZERO_SHOT, tuple(f"l{i}" for i in range(n_labels)), w, b, 30.0, parents or {},
                thresholds or {})


def _reference(head, x):
    """Probabilities and cosines the slow, obvious way."""
    logits = head.scale * np.array([[float(np.dot(v, w)) for w in head.weights] for v in x]) + head.bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), (logits - head.bias) / head.scale


@pytest.mark.parametrize("threshold", [0.0, 0.05])
@pytest.mark.parametrize("bias", [False, True])
def test_predictions_match_an_independent_softmax(threshold, bias):
    rng = np.random.default_rng(0)
    head = _random_head(rng, bias=bias)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    probs, cosines = _reference(head, x)
    found = head.predict(x, top_k=3, threshold=threshold)
    for i in range(len(x)):
        expected = [j for j in np.argsort(-probs[i]) if probs[i, j] >= threshold][:3]
        mine = found.labels[found.rows == i].tolist()
        assert mine == expected
        assert np.allclose(found.probability[found.rows == i], probs[i, expected], atol=1e-5)
        assert np.allclose(found.cosine[found.rows == i], cosines[i, expected], atol=1e-5)


def test_per_label_thresholds_min_cosine_and_implied_parents():
    rng = np.random.default_rng(1)
    head = _random_head(rng, parents={"l0": "l1", "l1": "animal", "l2": "animal"}, thresholds={"l3": 0.9})
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    probs, cosines = _reference(head, x)
    found = head.predict(x, top_k=None, threshold=0.2, min_cosine=0.1, implied=True)
    assert head.vocabulary[-1] == "animal"
    for i in range(len(x)):
        direct = {j for j in range(12) if probs[i, j] >= (0.9 if j == 3 else 0.2) and cosines[i, j] >= 0.1}
        want = {f"l{j}" for j in direct}
        chain = {"l0": ["l1", "animal"], "l1": ["animal"], "l2": ["animal"]}
        for j in direct:
            want.update(chain.get(f"l{j}", []))
        got = [head.vocabulary[c] for c in found.labels[found.rows == i]]
        assert sorted(got) == sorted(want)
        if "animal" in got:  # a parent carries its most probable child's probability
            best = max(probs[i, j] for j in direct if f"l{j}" in ("l0", "l1", "l2"))
            assert np.isclose(found.probability[found.rows == i][got.index("animal")], best, atol=1e-5)


# -- the few-shot probe -----------------------------------------------------------------

def _clusters(rng, centres, per_class, spread=0.15):
    x = np.concatenate([c + spread * rng.standard_normal((per_class, len(c))) for c in centres]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(len(centres)), per_class)


def test_the_probe_fixes_a_wrong_zero_shot_label_and_keeps_the_right_ones():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 32)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    words = centres.copy()
    words[3] = centres[2] * 0.9 + centres[3] * 0.1  # the text for class 3 points at class 2's images
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    head = Head("set", ZERO_SHOT, ("a", "b", "c", "d"), words, np.zeros(4, np.float32), 100.0)
    x, y = _clusters(rng, centres, 5)
    fit = train_probe(x, y, head)
    assert fit.regularisation is not None and fit.cv_accuracy > fit.zero_shot_accuracy
    held_x, held_y = _clusters(rng, centres, 50)
    probe = Head("probe", FEW_SHOT, head.labels, fit.weights, fit.bias, head.scale)
    zero_acc = (head.probabilities(held_x).argmax(1) == held_y).mean()
    probe_acc = (probe.probabilities(held_x).argmax(1) == held_y).mean()
    assert zero_acc < 0.8 and probe_acc > zero_acc + 0.15


def test_the_probe_keeps_zero_shot_when_the_examples_cannot_improve_it():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((3, 32)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    head = Head("set", ZERO_SHOT, ("a", "b", "c"), centres, np.zeros(3, np.float32), 100.0)
    x, y = _clusters(rng, centres, 2, spread=0.1)
    fit = train_probe(x, y, head)
    assert fit.zero_shot_accuracy == 1.0 and fit.regularisation is None
    assert np.array_equal(fit.weights, head.weights) and not fit.bias.any()


def test_a_subset_keeps_options_and_refuses_unknown_labels(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(YAML)
    pets = LabelSet.load(f)
    picked = pets.subset(["golden retriever", "cat"])
    assert picked.names == ["golden retriever", "cat"] and picked.labels[0].threshold == 0.3
    assert picked.ancestors("golden retriever") == ["dog", "animal"] and picked.templates == pets.templates
    with pytest.raises(LabelError, match="not labels of pets: blob"):
        pets.subset(["cat", "blob"])
