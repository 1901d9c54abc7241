"""Composed queries: parsing terms, the weighted vector sum, stored vectors, exact filters, paging."""

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library
from clipsearch.errors import QueryError
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


def test_query_vector_is_the_normalised_weighted_sum(tmp_path, fake_encoder):
    make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "photos"])
        q = Query.build("red", also=["2:green"], exclude=["0.5:blue"])
        xq, in_library = lib._query_vector(q)
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
