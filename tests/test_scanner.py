"""Walking folders: recursive, images only, hidden files and folders skipped."""

import pytest

from clipsearch.errors import PathNotFoundError
from clipsearch.scanner import resolve_roots, scan


def test_scan_finds_images_recursively_and_skips_hidden(tmp_path):
    for rel in ["a.jpg", "sub/b.PNG", "sub/deeper/c.webp", "notes.txt", ".hidden.jpg", ".cache/d.jpg",
                "sub/.git/e.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 3)
    found = {f.path for f in scan(resolve_roots([tmp_path]))}
    assert found == {str(tmp_path / r) for r in ["a.jpg", "sub/b.PNG", "sub/deeper/c.webp"]}
    f = next(iter(scan(resolve_roots([tmp_path / "a.jpg"]))))
    assert f.size == 3 and f.mtime_ns > 0


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(PathNotFoundError, match="no such file or folder"):
        resolve_roots([tmp_path / "nope"])
