"""``duplicates``: candidate pairs, pixel verdicts, groups, progress and the signature cache,
end to end with the demo model on real files."""

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from clipsearch import Library, demoworld, duplicates
from clipsearch.duplicates import SIGNATURES, SignatureStore, candidate_pairs, connected_groups, ranked_groups
from clipsearch.images import hash_bytes
from clipsearch.results import SearchHit
from clipsearch.tables import ImageRow


@pytest.fixture(scope="module")
def lookalikes(tmp_path_factory):
    """64 distinct pictures in look-alike families (a colour and shape shared, a place and
    size, all but the colour, a background), 12 of them with copies, re-encodes, resizes
    and crops, and 288 random pictures of the 48 colours and shapes as a new user would
    make them (issue 16: the old cosine rule made 8 false groups of these); indexed with
    the demo model."""
    root = tmp_path_factory.mktemp("lookalikes")
    written = demoworld.write_duplicate_set(root / "photos", 64, 12, seed=2, size_range=(96, 320))
    demoworld.write_images(root / "photos" / "random", 288, seed=3, size_range=(64, 200))
    with Library.open(root / "lib", model="demo") as lib:
        lib.index([root / "photos"])
    return root, written


def forget_signatures(library: Path) -> None:
    """As a library indexed before ``index`` kept pixel signatures: duplicates makes them."""
    shutil.rmtree(library / SIGNATURES)


def copy_library(root: Path, to: Path, signatures: bool = False) -> Path:
    shutil.copytree(root / "lib", to, ignore=None if signatures else shutil.ignore_patterns(SIGNATURES))
    return to


def as_names(groups) -> list[list[str]]:
    return sorted(sorted(Path(h.path).name for h in g.images) for g in groups)


def truth(written, keep=lambda w: True) -> list[list[str]]:
    members: dict[int, list[str]] = {}
    for w in written:
        if keep(w):
            members.setdefault(w.picture, []).append(w.path.name)
    return sorted(sorted(m) for m in members.values() if len(m) > 1)


class CountingPool(duplicates.DecodePool):
    """The real decode pool, counting the files it is given."""

    jobs: list = []

    def run(self, jobs):
        jobs = list(jobs)
        CountingPool.jobs += jobs
        yield from super().run(jobs)


@pytest.fixture
def decoded(monkeypatch):
    CountingPool.jobs = []
    monkeypatch.setattr(duplicates, "DecodePool", CountingPool)
    return CountingPool.jobs


def test_copies_re_encodes_resizes_and_crops_are_grouped_and_look_alikes_never(lookalikes, tmp_path):
    root, written = lookalikes
    assert {w.kind.split()[0] for w in written} == {"original", "copy", "re-encode", "resize", "crop"}
    with Library.open(copy_library(root, tmp_path / "lib")) as lib:
        groups = lib.duplicates()
        # Exactly the known groups: every duplicate with its original, no two distinct pictures together.
        assert as_names(groups) == truth(written)
        assert [g.score for g in groups] == sorted((g.score for g in groups), reverse=True)
        assert all(g.score == max(h.score for h in g.images) for g in groups)
        # Without crops: whole pictures only (copies, re-encodes, resizes), still no false group.
        whole = lib.duplicates(crops=False)
    allowed = truth(written, lambda w: not w.kind.startswith("crop"))
    assert all(any(set(g) <= set(a) for a in allowed) for g in as_names(whole))
    copies = [w.path.name for w in written if w.kind == "copy"]
    assert copies and all(any(c in g for g in as_names(whole)) for c in copies)
    assert all(h.score >= duplicates.DUPLICATE_THRESHOLD for g in whole for h in g.images)


def test_candidate_pairs_are_the_exact_nearest_neighbours_each_once(lookalikes):
    root, _ = lookalikes
    with Library.open(root / "lib") as lib:
        ids, rows, _ = lib.store.live()
        a, b, score = candidate_pairs(lib.vectors, ids, rows, neighbours=8, floor=0.9)
        x = lib.store.vector_file().rows(rows)
    assert (a < b).all() and len(set(zip(a.tolist(), b.tolist()))) == len(a) and (score >= 0.9).all()
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    expected = set()
    for i, row in enumerate(sim):
        order = np.argsort(-row, kind="stable")
        for j in order[:8]:
            # Leave out ties at the floor and at the 8th place (copies share one vector).
            if row[j] >= 0.9 + 1e-4 and row[j] > row[order[8]] + 1e-4:
                expected.add((min(ids[i], ids[j]), max(ids[i], ids[j])))
    assert len(expected) > len(ids) and expected <= set(zip(a.tolist(), b.tolist()))
    at = {int(i): n for n, i in enumerate(ids)}
    assert np.allclose(score, [sim[at[i], at[j]] for i, j in zip(a.tolist(), b.tolist())], atol=1e-4)


def test_ranked_groups_order_groups_and_images_and_drop_what_was_deleted():
    paths = {1: "/p/b.jpg", 2: "/p/a.jpg", 3: "/p/c.jpg", 4: "/p/d.jpg", 5: "/p/e.jpg", 6: "/p/g.jpg",
             7: "/p/f.jpg"}

    def hits(found):  # as Library._hits: id 5 was deleted meanwhile
        return [SearchHit(i, paths[i], s) for s, i in found if i != 5]

    found = [[(0.99, 1), (0.99, 2), (0.97, 3)], [(1.0, 4), (1.0, 5)], [(1.0, 6), (1.0, 7)]]  # disjoint
    groups = ranked_groups(found, hits)
    assert [[h.id for h in g.images] for g in groups] == [[7, 6], [2, 1, 3]]  # score first, then paths
    assert [g.score for g in groups] == [1.0, 0.99]


def test_connected_groups():
    assert connected_groups([]) == []
    pairs = [(3, 1), (2, 3), (5, 4), (10, 11), (11, 10), (20, 21), (21, 22), (22, 23)]
    expected = [[20, 21, 22, 23], [1, 2, 3], [4, 5], [10, 11]]  # largest first, then by first member
    assert connected_groups(pairs) == expected
    random.Random(1).shuffle(pairs)
    assert connected_groups(pairs) == expected
    chain = [(i + 1, i) for i in range(20_000)]  # deep trees stay flat: no recursion, no quadratic walk
    assert connected_groups(chain) == [list(range(20_001))]


def test_progress_is_reported_by_stage_not_by_pair(lookalikes, tmp_path):
    root, _ = lookalikes
    calls = []
    with Library.open(copy_library(root, tmp_path / "lib")) as lib:
        first = lib.duplicates(progress=lambda stage, done, total: calls.append((stage, done, total)))
        again = []
        second = lib.duplicates(progress=lambda stage, done, total: again.append((stage, done, total)))
    assert as_names(first) == as_names(second)
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages == ["finding neighbours", "reading pixels", "comparing pixels"]
    for stage in stages:
        mine = [(done, total) for s, done, total in calls if s == stage]
        assert all(0 <= done <= total for done, total in mine) and mine[-1][0] == mine[-1][1] > 0
        assert [d for d, _ in mine] == sorted(d for d, _ in mine)
    assert len(calls) < 20  # not per pair: the library has hundreds of candidate pairs
    # A repeat run reads no pixels: its signatures are kept.
    assert [s for s in dict.fromkeys(s for s, _, _ in again)] == ["finding neighbours", "comparing pixels"]


def make_pictures(folder: Path) -> dict[str, Path]:
    """Three pictures, each with a crop and a JPEG re-encode, and one byte copy."""
    folder.mkdir()
    rng = random.Random(4)
    paths = {}
    for colour, shape in [("red", "circle"), ("blue", "star"), ("green", "square")]:
        image = demoworld.render(demoworld.random_scene(rng, colour, shape, (200, 300)))
        for name, picture in [("", image), ("_crop", image.crop((8, 6, image.width - 4, image.height - 10)))]:
            paths[colour + name] = folder / f"{colour}{name}.png"
            picture.save(paths[colour + name])
        paths[colour + "_jpeg"] = folder / f"{colour}_jpeg.jpg"
        image.save(paths[colour + "_jpeg"], quality=60)
    paths["red_copy"] = folder / "red_copy.png"
    paths["red_copy"].write_bytes(paths["red"].read_bytes())
    return paths


@pytest.mark.parametrize("kept", [True, False], ids=["signatures-from-index", "signatures-from-duplicates"])
def test_a_deleted_or_changed_file_is_in_no_group_and_is_never_decoded(tmp_path, decoded, kept):
    paths = make_pictures(tmp_path / "photos")
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([tmp_path / "photos"])
        if not kept:
            forget_signatures(tmp_path / "lib")
        paths["blue_crop"].unlink()
        paths["green_jpeg"].write_bytes(b"\xff\xd8 not a JPEG any more")
        paths["red"].unlink()  # red_copy.png has its content, and so its vector
        groups = as_names(lib.duplicates())
    assert groups == [["blue.png", "blue_jpeg.jpg"], ["green.png", "green_crop.png"],
                      ["red_copy.png", "red_crop.png", "red_jpeg.jpg"]]
    # Where index kept the signatures nothing is decoded; else each file of a doubtful
    # pair that is still as it was indexed, once.
    present = ["blue.png", "blue_jpeg.jpg", "green.png", "green_crop.png", "red_copy.png", "red_crop.png",
               "red_jpeg.jpg"]
    assert sorted(Path(p).name for _, p in decoded) == ([] if kept else present)


def test_index_keeps_the_signatures_that_duplicates_would_make(lookalikes, tmp_path, decoded):
    root, written = lookalikes
    calls = []
    with Library.open(copy_library(root, tmp_path / "lib", signatures=True)) as lib:
        groups = lib.duplicates(progress=lambda stage, done, total: calls.append(stage))
        with lib.store.engine.connect() as conn:
            files = {i: (p, h) for i, p, h in conn.execute(select(ImageRow.id, ImageRow.path, ImageRow.content_hash))}
    assert as_names(groups) == truth(written)
    assert "reading pixels" not in calls and decoded == []
    # The same signatures as duplicates makes from the files itself, up to resampling
    # (index decodes at the model's size, duplicates at the signature's): a level or two.
    kept_table, kept_rows = SignatureStore(root / "lib" / SIGNATURES).signatures(files)
    made_table, made_rows = SignatureStore(tmp_path / "made").signatures(files)
    assert len(decoded) == len({h for _, h in files.values()}) and kept_rows.keys() == made_rows.keys() == files.keys()
    kept = kept_table[[kept_rows[i] for i in files]].astype(np.int16)
    made = made_table[[made_rows[i] for i in files]].astype(np.int16)
    head = 8  # the original's width and height: equal
    assert (kept[:, :head] == made[:, :head]).all()
    assert np.abs(kept[:, head:] - made[:, head:]).mean() < 1.5


def test_signatures_are_kept_by_content_and_a_changed_file_gets_a_new_one(tmp_path, decoded):
    paths = make_pictures(tmp_path / "photos")
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([tmp_path / "photos"])
        forget_signatures(tmp_path / "lib")
        first = as_names(lib.duplicates())
        assert len(first) == 3 and decoded
        decoded.clear()
        assert as_names(lib.duplicates()) == first and decoded == []  # nothing decoded again
        # The blue crop becomes another picture, of the same colour and shape, re-indexed:
        # index keeps the new content's signature, so duplicates decodes nothing.
        other = demoworld.render(demoworld.random_scene(random.Random(9), "blue", "star", (200, 300)))
        other.save(paths["blue_crop"])
        lib.index([tmp_path / "photos"])
        groups = as_names(lib.duplicates())
    assert decoded == []
    assert ["blue.png", "blue_jpeg.jpg"] in groups and not any("blue_crop.png" in g for g in groups)


def test_a_damaged_signature_file_is_made_again_not_fatal(tmp_path, decoded):
    make_pictures(tmp_path / "photos")
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([tmp_path / "photos"])
        forget_signatures(tmp_path / "lib")
        first = as_names(lib.duplicates())
        needed = len(decoded)
        kept = list((tmp_path / "lib" / SIGNATURES).glob("*.sig"))
        assert len(kept) == 1
        kept[0].write_bytes(kept[0].read_bytes()[:1000])  # cut short
        decoded.clear()
        assert as_names(lib.duplicates()) == first and len(decoded) == needed
        for path in (tmp_path / "lib" / SIGNATURES).glob("*.sig"):
            path.write_bytes(b"garbage" * 100)  # not ours at all
        decoded.clear()
        assert as_names(lib.duplicates()) == first and len(decoded) == needed
    assert len(list((tmp_path / "lib" / SIGNATURES).glob("*.sig"))) == 1


def test_merging_keeps_only_the_signatures_still_in_use(tmp_path, decoded):
    folder = tmp_path / "photos"
    folder.mkdir()
    files = {}
    for n, colour in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200)]):
        path = folder / f"{n}.png"
        Image.new("RGB", (40 + n, 30), colour).save(path)
        files[n] = (str(path), hash_bytes(path.read_bytes()))
    store = SignatureStore(tmp_path / "pixels")
    for n in files:  # one file of signatures per run
        table, row_of = store.signatures({n: files[n]})
        assert list(row_of) == [n]
    assert store.files() == 3 and len(decoded) == 3
    store.merge({bytes.fromhex(files[0][1]), bytes.fromhex(files[2][1])})
    assert store.files() == 1
    decoded.clear()
    table, row_of = store.signatures(files)
    assert sorted(row_of) == [0, 1, 2] and [Path(p).name for _, p in decoded] == ["1.png"]
    assert len({table[r].tobytes() for r in row_of.values()}) == 3


def test_signatures_that_cannot_be_kept_cost_neither_the_index_run_nor_duplicates(tmp_path, caplog):
    make_pictures(tmp_path / "photos")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / SIGNATURES).write_text("a file where their folder goes")
    with Library.open(tmp_path / "lib", model="demo") as lib:
        report = lib.index([tmp_path / "photos"])
        assert report.added == 10 and not report.errors
        assert "could not keep pixel signatures" in caplog.text
        caplog.clear()
        groups = as_names(lib.duplicates())
    assert len(groups) == 3 and "could not keep pixel signatures" in caplog.text


def test_an_interrupted_index_run_keeps_the_signatures_of_what_it_committed(tmp_path, fake_encoder):
    demoworld.write_images(tmp_path / "photos", 12, seed=5, size_range=(64, 96))
    encode, batches = fake_encoder.encode_crops, []

    def encode_then_stop(crops):
        batches.append(len(crops))
        if len(batches) == 2:
            raise KeyboardInterrupt
        return encode(crops)

    fake_encoder.encode_crops = encode_then_stop
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        with pytest.raises(KeyboardInterrupt):
            lib.index([tmp_path / "photos"], batch_size=4, workers=1)
        with lib.store.engine.connect() as conn:
            files = {i: (p, h) for i, p, h in conn.execute(select(ImageRow.id, ImageRow.path, ImageRow.content_hash))}
    assert len(files) == 4  # the first batch
    CountingPool.jobs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(duplicates, "DecodePool", CountingPool)
        _, rows = SignatureStore(tmp_path / "lib" / SIGNATURES).signatures(files)
    assert rows.keys() == files.keys() and CountingPool.jobs == []
