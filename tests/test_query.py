"""Composed queries: parsing terms, the weighted vector sum, stored vectors, exact filters, paging."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library
from clipsearch.embedding import QueryEmbedder
from clipsearch.errors import ArgumentError, QueryError
from clipsearch.query import Query, Term
from test_library import COLOURS, make_images


def test_term_parsing(tmp_path):
    img = tmp_path / "2:odd.png"  # an existing file wins over the weight syntax
    img.write_bytes(b"x")
    assert Term.parse("a beach") == Term("text", "a beach", 1.0)
    assert Term.parse("2:buildings") == Term("text", "buildings", 2.0)
    assert Term.parse("0.5:id:12", sign=-1) == Term("id", 12, -0.5)
    assert Term.parse(str(img)) == Term("image", str(img), 1.0)
    assert Term.parse("3:" + str(img.with_name("x.png"))).kind == "text"  # no such file: words
    for bad in ["", "  ", "0:sky", "2:   "]:
        with pytest.raises(QueryError):
            Term.parse(bad)
    with pytest.raises(QueryError, match="at least one positive"):
        Query.build(exclude=["people"])


def test_terms_from_a_request_never_touch_the_file_system(tmp_path):
    img = tmp_path / "2:odd.png"
    img.write_bytes(b"x")
    # Whether a path exists must not change what a term means: it is always words.
    assert Term.parse(str(img), files=False) == Term("text", str(img), 1.0)
    assert Term.parse("3:" + str(img), files=False) == Term("text", str(img), 3.0)
    assert Term.parse(img.name, files=False) == Term("text", "odd.png", 2.0)  # the weight syntax, not the file
    assert Term.parse("0.5:id:12", sign=-1, files=False) == Term("id", 12, -0.5)


def test_a_zero_weight_is_explained_for_the_side_it_was_given_on():
    with pytest.raises(QueryError, match="must be positive") as positive:
        Term.parse("0:x")
    assert "use --not" in positive.value.worded("cli")[1]
    with pytest.raises(QueryError, match="must be positive") as negative:
        Term.parse("0:x", sign=-1)
    assert "use --not" not in (negative.value.worded("cli")[1] or "")


def test_an_image_term_is_an_id_or_a_normalised_path(tmp_path):
    assert Term.image("id:5") == Term("id", 5, 1.0)
    assert Query.build(image="id:42", also=["in winter"]).terms[0] == Term("id", 42, 1.0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jpg").write_bytes(b"x")
    winding = f"{tmp_path}/b/../b/x.jpg"
    assert Term.image(winding).value == str(tmp_path / "b" / "x.jpg")
    assert Term.parse(winding).value == str(tmp_path / "b" / "x.jpg")


def test_query_vector_is_the_normalised_weighted_sum(tmp_path, fake_encoder):
    make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "photos"])
        q = Query.build("red", also=["2:green"], exclude=["0.5:blue"])
        xq, in_library = QueryEmbedder(lib.root, lib.store, encoder=fake_encoder).query_vector(q, lib.vectors.dim)
        t = fake_encoder.encode_texts(["red", "green", "blue"])
        expected = t[0] + 2 * t[1] - 0.5 * t[2]
        assert np.allclose(xq, expected / np.linalg.norm(expected), atol=1e-6) and not in_library


def test_an_indexed_query_image_uses_its_stored_vector_and_is_left_out(tmp_path, fake_encoder):
    paths = make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "photos"])
        calls = list(fake_encoder.encoded)
        hits = lib.search(image=paths["red"], k=5)
        assert fake_encoder.encoded == calls  # nothing encoded
        assert str(paths["red"]) not in {h.path for h in hits} and len(hits) == 2
        assert lib.search(image=paths["red"], k=1, include_query_images=True)[0].path == str(paths["red"])
        assert [h.path for h in lib.similar(paths["red"], k=5)] == [h.path for h in hits]


def test_filters_are_exact_and_combine_with_paging(tmp_path, fake_encoder):
    make_images(tmp_path / "a")
    make_images(tmp_path / "b")
    Image.new("RGB", (40, 30), COLOURS["red"]).save(tmp_path / "b" / "red.jpg", quality=95)
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "a", tmp_path / "b"])
        inside_b = lib.search(text="red", k=10, folders=[tmp_path / "b"])
        assert {h.path for h in inside_b} == {str(p) for p in (tmp_path / "b").iterdir()}
        jpgs = lib.search(text="blue", k=10, extensions=["JPG"])
        assert [h.path for h in jpgs] == [str(tmp_path / "b" / "red.jpg")]
        everything = lib.search(text="red", k=10)
        assert len(everything) == 7
        pages = lib.search(text="red", k=3) + lib.search(text="red", k=3, offset=3) + lib.search(
            text="red", k=3, offset=6)
        assert [h.id for h in pages] == [h.id for h in everything]
        cut = everything[2].score
        assert [h.id for h in lib.search(text="red", k=10, min_score=cut)] == [h.id for h in everything[:3]]


def _dated(path, rgb, when: str):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when
    Image.new("RGB", (30, 20), rgb).save(path, "JPEG", exif=exif.tobytes(), quality=95)


def test_date_filters_and_sorting(tmp_path, fake_encoder):
    from datetime import datetime

    folder = tmp_path / "photos"
    folder.mkdir()
    _dated(folder / "old.jpg", (230, 20, 20), "2019:05:01 10:00:00")
    _dated(folder / "mid.jpg", (200, 40, 40), "2021:05:01 10:00:00")
    _dated(folder / "new.jpg", (150, 60, 60), "2023:05:01 10:00:00")
    Image.new("RGB", (30, 20), (20, 20, 230)).save(folder / "undated.png")  # falls back to its mtime (now)
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([folder])
        names = lambda hits: [h.path.rsplit("/", 1)[1] for h in hits]  # noqa: E731
        assert names(lib.search(text="red", k=10, after=datetime(2020, 1, 1), before=datetime(2022, 1, 1))) == [
            "mid.jpg"]
        assert set(names(lib.search(text="red", k=10, after=datetime(2022, 1, 1)))) == {"new.jpg", "undated.png"}
        by_date = lib.search(text="red", k=10, sort="date")
        assert names(by_date) == ["undated.png", "new.jpg", "mid.jpg", "old.jpg"]
        assert by_date[1].taken_at == "2023-05-01T10:00:00+00:00"
        assert names(lib.search(text="red", k=2, sort="path")) == sorted(names(lib.search(text="red", k=2)))
        # With a cutoff, every hit above it is ordered, not just the best k.
        cutoff = lib.search(text="red", k=10)[2].score
        assert names(lib.search(text="red", k=10, sort="date", min_score=cutoff)) == [
            n for n in ["undated.png", "new.jpg", "mid.jpg", "old.jpg"]
            if n in names(lib.search(text="red", k=3))]
        with pytest.raises(ArgumentError, match="unknown sort order"):
            lib.search(text="red", sort="size")


def test_dates_past_64_bits_of_nanoseconds_bound_the_search_as_they_say(tmp_path, fake_encoder):
    from datetime import datetime

    make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "photos"])
        every = len(lib.search(text="red", k=100))
        # Stored times are 64-bit nanoseconds (1677 to 2262); bounds beyond them mean all or nothing.
        assert lib.search(text="red", k=100, after=datetime(9999, 12, 31, 23, 59, 59)) == []
        assert lib.search(text="red", k=100, before=datetime(1, 1, 1)) == []
        assert len(lib.search(text="red", k=100, after=datetime(1, 1, 1), before=datetime(9999, 12, 31))) == every


def test_an_id_past_64_bits_is_no_image():
    from clipsearch.errors import PathNotFoundError
    from clipsearch.query import MAX_IMAGE_ID

    assert Term.parse(f"id:{MAX_IMAGE_ID}") == Term("id", MAX_IMAGE_ID, 1.0)
    for parse in (Term.parse, Term.image):
        with pytest.raises(PathNotFoundError, match="no indexed image has id"):
            parse(f"id:{MAX_IMAGE_ID + 1}")  # the database could not even be asked


def test_paging_is_stable_when_duplicates_tie(tmp_path, fake_encoder):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(folder / "a.png")
    for i in range(12):  # thirteen files, one vector: every score ties
        (folder / f"copy{i:02d}.png").write_bytes((folder / "a.png").read_bytes())
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([folder])
        everything = [h.id for h in lib.search(text="red", k=13)]
        pages = [h.id for off in range(0, 13, 4) for h in lib.search(text="red", k=4, offset=off)]
        assert pages == everything == sorted(everything)


def test_duplicates_group_re_encodes_resizes_crops_and_copies_with_the_demo_model(tmp_path):
    import io
    import random

    from clipsearch import demoworld

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = random.Random(3)
    labels = [("red", "circle"), ("blue", "star"), ("green", "square"), ("yellow", "ring"), ("purple", "cross")]
    for colour, shape in labels:
        image = demoworld.render(demoworld.random_scene(rng, colour, shape, (300, 500)))
        image.save(folder / f"{colour}_{shape}.png")
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=50)
        (folder / f"{colour}_{shape}_reencoded.jpg").write_bytes(buf.getvalue())
        image.resize((image.width // 2, image.height // 2)).save(folder / f"{colour}_{shape}_half.png")
        for share in (95, 90):  # crops keeping 95% and 90% of each side, off centre
            w, h = image.width * share // 100, image.height * share // 100
            x, y = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
            image.crop((x, y, x + w, y + h)).save(folder / f"{colour}_{shape}_crop{share}.png")
        # Another picture of the same colour and shape: similar, not a duplicate.
        demoworld.render(demoworld.random_scene(rng, colour, shape, (300, 500))).save(
            folder / f"other_{colour}_{shape}.png")
    (folder / "red_circle_copy.png").write_bytes((folder / "red_circle.png").read_bytes())
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([folder])
        groups = lib.duplicates()
        as_names = [sorted(Path(h.path).name.rsplit(".", 1)[0] for h in g.images) for g in groups]
        expected = [sorted([f"{c}_{s}", f"{c}_{s}_reencoded", f"{c}_{s}_half", f"{c}_{s}_crop95", f"{c}_{s}_crop90"]
                           + (["red_circle_copy"] if c == "red" else [])) for c, s in labels]
        assert sorted(as_names) == sorted(expected)
        assert groups[0].score >= groups[-1].score
        # Without the pixel check only what CLIP alone is sure of is grouped: some crops are missed.
        strict = lib.duplicates(crops=False)
        assert sum(len(g.images) for g in strict) < sum(len(g.images) for g in groups)
        assert all(h.score >= 0.995 for g in strict for h in g.images)
        with pytest.raises(ArgumentError):
            lib.duplicates(threshold=1.5)
