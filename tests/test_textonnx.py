"""Text queries without torch: the standalone tokenizer and the ONNX text tower."""

import json
import random
import shutil

import numpy as np
import pytest

from clipsearch import Library, textonnx
from clipsearch.embedding import QueryEmbedder
from clipsearch.tokenizer import ClipTokenizer, write_merges

pytest.importorskip("onnxruntime")


def _corpus(n: int = 1500) -> list[str]:
    """ASCII, accents, CJK, emoji, HTML entities, control characters, long, empty and blank text."""
    rng = random.Random(0)
    words = ["a", "photo", "of", "the", "dog's", "beach", "café", "naïve", "日本語", "東京", "😀", "🐶", "&amp;",
             "&lt;b&gt;", "<b>", "x", "RED", "Circle!!", "3.14", "don't", "we'll", "\t", "\n", "\u200b", "ﬁ",
             "straße", "Ελληνικά", "русский", "عربى", "<end_of_text>", "<start_of_text>", "mojibake Ã©"]
    out = ["", " ", "\n\t", "a photo of a cat", " ".join(["long"] * 300), "x" * 500]
    while len(out) < n:
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))))
    return out


@pytest.fixture(scope="module")
def merges(tmp_path_factory):
    import open_clip
    from pathlib import Path

    path = tmp_path_factory.mktemp("bpe") / "bpe.txt.gz"
    write_merges(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", path)
    return path


@pytest.mark.parametrize("model", ["demo", "ViT-B-32"])
def test_the_standalone_tokenizer_gives_open_clips_ids(merges, model):
    import open_clip

    from clipsearch.resources import demo_model_dir

    theirs = open_clip.get_tokenizer(f"local-dir:{demo_model_dir()}" if model == "demo" else model)
    mine = ClipTokenizer(merges, theirs.context_length)
    texts = _corpus()
    assert np.array_equal(mine(texts), theirs(texts).numpy())


def test_the_bpe_caches_are_bounded_and_starting_over_changes_no_id(merges):
    """A server tokenises whatever words its requests make up: both tokenizers' caches start
    over past a bound, keeping the special tokens, and give the same ids as before."""
    from clipsearch.encoder import Encoder
    from clipsearch.tokenizer import BoundedCache

    texts = _corpus(300)
    expected = ClipTokenizer(merges)(texts)
    small = ClipTokenizer(merges)
    small.cache = BoundedCache({t: t for t in ("<start_of_text>", "<end_of_text>")}, limit=200)
    assert np.array_equal(small(texts), expected)  # it started over many times on the way
    assert sum(len(k) + len(v) for k, v in small.cache.items()) <= 200 + 2 * len("<start_of_text>")
    assert {"<start_of_text>", "<end_of_text>"} <= set(small.cache)

    theirs = Encoder("demo").load()._tokenizer  # open_clip's, as the loaded model uses it
    assert isinstance(theirs.cache, BoundedCache)
    rng = random.Random(1)
    made_up = [" ".join("".join(rng.choice("abcdefghij") for _ in range(12)) for _ in range(30)) for _ in range(3000)]
    theirs(made_up)
    assert sum(len(k) + len(v) for k, v in theirs.cache.items()) <= 1_000_000 + 1000


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    from clipsearch.encoder import Encoder

    root = tmp_path_factory.mktemp("onnx_demo")
    (root / ".text-onnx.999999.tmp").mkdir()  # left by an export that was killed
    encoder = Encoder("demo").load()
    meta = encoder.export_text_tower(root)
    return root, encoder, meta


def test_the_onnx_text_tower_matches_torch_on_the_demo_model(demo_export):
    root, encoder, meta = demo_export
    assert meta["model"] == "demo" and meta["check_min_cosine"] >= textonnx.MIN_COSINE
    assert sorted(p.name for p in root.iterdir()) == ["text-onnx"]  # the killed run's leftovers are gone
    onnx = textonnx.load(root, "demo")
    texts = _corpus(400)
    cosine = (onnx.encode_texts(texts) * encoder.encode_texts(texts)).sum(1)
    assert cosine.min() >= 0.9999
    assert textonnx.load(root, "ViT-B-32/laion2b_s34b_b79k") is None  # made for another model: not used


def test_the_onnx_text_tower_matches_torch_on_a_random_vit_b_32(tmp_path):
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    meta = textonnx.export(model, tokenizer, tmp_path, "ViT-B-32/random-test")
    onnx = textonnx.load(tmp_path, "ViT-B-32/random-test")
    texts = _corpus(200)
    with torch.inference_mode():
        expected = model.encode_text(tokenizer(texts)).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert (onnx.encode_texts(texts) * expected).sum(1).min() >= 0.9999
    assert meta["context_length"] == 77 and meta["dim"] == 512


def test_index_saves_the_text_tower_and_a_cold_search_never_imports_torch(tmp_path, monkeypatch, demo_images):
    from test_cli import run_counting_torch

    monkeypatch.setenv("CLIPSEARCH_TEXT_ONNX", "1")
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model="demo") as lib:
        lib.index([demo_images[0].parent])
        expected = [h.path for h in lib.search("a purple star", k=5)]  # the torch model, loaded by index
    assert json.loads((lib_dir / "text-onnx" / "meta.json").read_text())["model"] == "demo"
    out, imported = run_counting_torch(["clipsearch", "search", "a purple star", "-n", "5", "-L", str(lib_dir),
                                        "--paths-only"])
    assert not imported and out.splitlines() == expected


def test_a_stale_export_falls_back_to_torch(tmp_path, demo_export, demo_images, monkeypatch):
    root, _, _ = demo_export
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model="demo") as lib:
        lib.index([demo_images[0].parent])
    shutil.copytree(root / "text-onnx", lib_dir / "text-onnx")
    meta_path = lib_dir / "text-onnx" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "model": "something-else"}))
    with Library.open(lib_dir) as lib:
        embedder = QueryEmbedder(lib.root, lib.store)
        assert embedder.text_encoder() is embedder.encoder  # not the export made for another model
        assert lib.search("a red circle", k=1)


# What a search never runs: library.py imports these where they are used, and the store
# reads what a search needs as plain SQL (plainsql.py), without SQLAlchemy.
_NOT_FOR_SEARCH = ("torch", "sqlalchemy", "alembic", "clipsearch.tables", "clipsearch.indexer", "clipsearch.scanner", "clipsearch.images", "clipsearch.evaluation",
                   "clipsearch.cluster", "clipsearch.thumbnails", "clipsearch.duplicates", "clipsearch.decodepool",
                   "clipsearch.tagging", "clipsearch.classifier", "clipsearch.labels", "clipsearch.albums")


@pytest.mark.parametrize("filters", [[], ["--in", "{photos}", "--ext", "png", "--after", "2000-01-01",
                                           "--no-tag", "dog"]], ids=["plain", "filtered"])
def test_a_cold_text_search_loads_no_sqlalchemy_and_no_indexing_or_evaluation_code(tmp_path, monkeypatch, demo_images,
                                                                                   filters):
    import subprocess
    import sys

    monkeypatch.setenv("CLIPSEARCH_TEXT_ONNX", "1")
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([demo_images[0].parent])
        expected = [h.path for h in lib.search("a red circle", k=3)]
    argv = ["clipsearch", "search", "a red circle", "-n", "3", "-f", "-L", str(tmp_path / "lib"), "--no-service",
            *(f.format(photos=demo_images[0].parent) for f in filters)]
    code = (f"import sys\nsys.argv = {argv!r}\n"
            "from clipsearch.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            f"print(sorted(m for m in {_NOT_FOR_SEARCH!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    *paths, loaded = out.stdout.strip().splitlines()
    assert paths == expected  # the filters let every demo picture through
    assert loaded == "[]"
