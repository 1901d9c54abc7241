"""--precision: the int8 image tower is faithful, `auto` settles and is recorded, and a
library's vectors are never made at two precisions that do not match."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library, PrecisionMismatchError, imageonnx, precision
from clipsearch.encoder import Encoder
from clipsearch.errors import InputError, ModelError

from conftest import run_cli


def vectors_by_path(root) -> dict[str, np.ndarray]:
    with Library.open(root, create=False) as lib:
        ids, _rows, _ = lib.store.live()
        paths = lib.image_paths(ids)
        return dict(zip((paths[int(i)] for i in ids), lib.stored_vectors(ids)))


@pytest.fixture(scope="module")
def int8_library(tmp_path_factory, demo_images):
    root = tmp_path_factory.mktemp("int8")
    with Library.open(root, model="demo") as lib:
        report = lib.index([demo_images[0].parent], precision="int8")
    assert report.added == len(demo_images) and report.precision == "int8"
    return root


# -- the rules, without a model -------------------------------------------------------


def test_precision_names_are_checked(monkeypatch):
    assert precision.requested(None) == "fp32"  # conftest sets $CLIPSEARCH_PRECISION
    monkeypatch.delenv(precision.ENV_PRECISION)
    assert precision.requested(None) == "auto"
    assert precision.requested(" INT8 ") == "int8"
    with pytest.raises(InputError, match="unknown precision 'fp64'") as err:
        precision.requested("fp64")
    assert "auto, fp32, fp16, bf16, int8" in err.value.hint


def test_auto_keeps_what_the_library_recorded_and_other_choices_are_refused():
    assert precision.for_library("auto", [], "cpu") == "auto"  # a fresh library: the encoder decides
    assert precision.for_library("auto", ["int8"], "cpu") == "int8"
    assert precision.for_library("int8", ["int8"], "cpu") == "int8"
    with pytest.raises(PrecisionMismatchError, match="made at int8, not fp32"):
        precision.for_library("fp32", ["int8"], "cpu")
    with pytest.raises(PrecisionMismatchError):
        precision.for_library("int8", ["fp32"], "cuda")
    with pytest.raises(InputError, match="`precision=fp16` cannot run on cpu"):
        precision.for_library("fp16", [], "cpu")
    # fp16 and fp32 vectors are the same to six decimals: a GPU-made library can be
    # updated on a CPU, and the record then names both.
    assert precision.for_library("auto", ["fp16"], "cpu") == "fp32"
    assert precision.for_library("fp16", ["fp32"], "cuda") == "fp16"
    assert precision.record(["fp16"], "fp32") == "fp16,fp32"
    assert precision.record(["fp16", "fp32"], "fp16") == "fp16,fp32"
    assert precision.parse_record("fp16,fp32") == ["fp16", "fp32"]


def test_auto_takes_int8_only_where_it_was_measured_faster():
    faster = {"fp32_images_per_s": 28.0, "int8_images_per_s": 50.0}
    slower = {"fp32_images_per_s": 2000.0, "int8_images_per_s": 1400.0}
    a_tie = {"fp32_images_per_s": 2052.0, "int8_images_per_s": 2097.0}  # noise, not a gain
    assert precision.auto_choice("cpu", faster) == "int8"
    assert precision.auto_choice("cpu", slower) == "fp32"
    assert precision.auto_choice("cpu", a_tie) == "fp32"
    assert precision.auto_choice("cpu", None) == "fp32"
    assert precision.auto_choice("cuda", faster) == "fp16"
    assert precision.auto_choice("mps", faster) == "fp32"


def test_fidelity_measures_cosine_and_neighbour_overlap():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 16)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert precision.fidelity(ref, ref) == pytest.approx((1.0, 1.0, 1.0))
    shuffled = ref[rng.permutation(50)]
    mean, low, overlap = precision.fidelity(ref, shuffled)
    assert mean < 0.5 and low < 0 and overlap < 0.5


# -- the demo model, end to end ------------------------------------------------------


def test_int8_vectors_are_faithful_to_fp32_on_real_images(int8_library, demo_library):
    fp32, int8 = vectors_by_path(demo_library), vectors_by_path(int8_library)
    assert fp32.keys() == int8.keys()
    paths = sorted(fp32)
    mean, low, overlap = precision.fidelity([fp32[p] for p in paths], [int8[p] for p in paths])
    assert mean >= 0.995 and overlap >= 0.9, (mean, low, overlap)
    meta = json.loads((int8_library / imageonnx.FOLDER / "meta.json").read_text())
    assert meta["model"] == "demo" and meta["check_mean_cosine"] >= imageonnx.MIN_MEAN_COSINE


def test_the_library_records_its_precision_and_keeps_it(int8_library, demo_images, tmp_path):
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "copy.png").write_bytes(demo_images[0].read_bytes())
    Image.new("RGB", (90, 70), (200, 30, 30)).save(extra / "red.png")
    Image.new("RGB", (90, 70), (200, 30, 30)).save(tmp_path / "query.png")  # not indexed
    tower = int8_library / imageonnx.FOLDER / "image.onnx"
    made = tower.stat().st_mtime_ns
    with Library.open(int8_library) as lib:
        assert lib.info().precision == "int8"
        with pytest.raises(PrecisionMismatchError, match="made at int8, not fp32") as err:
            lib.index([extra], precision="fp32")
        assert "leave out --precision" in err.value.worded("cli")[1]
        report = lib.index([extra], precision="auto")
        assert report.added == 2 and report.precision == "int8"
        # An image query is computed the library's way too, from the kept tower.
        hit = lib.search(image=tmp_path / "query.png", k=1)[0]
        assert hit.path == str(extra / "red.png") and hit.score > 0.999
        assert lib.encoder.precision == "int8"
    assert tower.stat().st_mtime_ns == made  # made once per library


def test_an_image_query_on_an_int8_library_needs_no_torch(int8_library, tmp_path):
    from test_cli import run_counting_torch

    from sqlalchemy import text

    Image.new("RGB", (80, 60), (30, 70, 215)).save(tmp_path / "blue.png")  # never seen by the library
    out, imported = run_counting_torch(["clipsearch", "search", "--image", str(tmp_path / "blue.png"), "-n", "5",
                                        "-L", str(int8_library), "--paths-only"])
    assert not imported
    with Library.open(int8_library) as lib:
        with lib.store.engine.begin() as conn:  # the cold process encoded it (and cached it): forget that
            assert conn.execute(text("DELETE FROM image_cache")).rowcount == 1
        lib.encoder.load()  # in-process: the torch model with its int8 session
        expected = [h.path for h in lib.search(image=tmp_path / "blue.png", k=5)]
    assert out.splitlines() == expected


def test_auto_on_a_cpu_settles_by_the_measured_speed(tmp_path, demo_images):
    with Library.open(tmp_path / "lib", model="demo") as lib:
        report = lib.index([demo_images[0].parent], precision="auto")
        meta = json.loads((tmp_path / "lib" / imageonnx.FOLDER / "meta.json").read_text())
        assert report.precision == precision.auto_choice("cpu", meta)
        assert lib.info().precision == report.precision


def test_an_unfaithful_int8_tower_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(imageonnx, "MIN_MEAN_COSINE", 1.01)  # no export can pass this
    enc = Encoder("demo", "cpu", precision="auto", workdir=tmp_path)
    crops = imageonnx.check_crops(enc.load().pixel_spec, 4)
    assert enc.precision == "fp32" and enc.encode_crops(crops).shape == (4, enc.dim)
    assert not (tmp_path / imageonnx.FOLDER).exists() and not list(tmp_path.glob(".image-onnx*"))
    with pytest.raises(ModelError, match="`precision=int8` is not available for demo: its int8 image tower is not faithful"):
        Encoder("demo", "cpu", precision="int8", workdir=tmp_path).load()


def test_the_cli_takes_precision_and_info_shows_it(tmp_path, demo_images):
    lib = tmp_path / "lib"
    bad = run_cli("index", str(demo_images[0].parent), "-L", str(lib), "--model", "demo", "--precision", "fp64")
    assert bad.returncode == 1 and "unknown precision 'fp64'" in bad.stderr and "Traceback" not in bad.stderr
    done = run_cli("index", str(demo_images[0]), "-L", str(lib), "--model", "demo", "--precision", "int8",
                   env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "added 1," in done.stderr and ", precision int8" in done.stderr
    info = json.loads(run_cli("info", "-L", str(lib), "--json").stdout)
    assert info["precision"] == "int8"


def test_a_cuda_batch_is_the_largest_power_of_two_that_fits_half_the_free_memory():
    from clipsearch.encoder import CPU_BATCH, batch_for_memory

    mb = 1 << 20
    assert batch_for_memory(80_000 * mb, 20 * mb) == 1024  # an idle H100, ViT-B-32: capped
    assert batch_for_memory(8_000 * mb, 20 * mb) == 128  # 4 GB of activations / 20 MB = 200
    assert batch_for_memory(8_000 * mb, 100 * mb) == 32  # ViT-L-14 on a small card: the floor
    assert batch_for_memory(0, 20 * mb) == 32
    assert Encoder("demo", "cpu").batch_size() == CPU_BATCH  # no model load needed to say so
