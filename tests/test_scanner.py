"""Walking folders: recursive, images only, hidden files and folders skipped."""

import os

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


def touch(root, *rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def names(root, options=None):
    from clipsearch.scanner import ScanOptions

    return sorted(os.path.relpath(f.path, root) for f in scan(resolve_roots([root]), options or ScanOptions()))


def test_default_and_user_excludes(tmp_path):
    from clipsearch.scanner import ScanOptions

    touch(tmp_path, "keep.jpg", "node_modules/x.jpg", "@eaDir/thumb.jpg", "raw/skip.jpg", "b/drafts-1.png",
          ".hidden/h.jpg", "._apple.jpg")
    assert names(tmp_path) == ["b/drafts-1.png", "keep.jpg", "raw/skip.jpg"]
    assert names(tmp_path, ScanOptions(excludes=("raw", "drafts-*"))) == ["keep.jpg"]
    assert names(tmp_path, ScanOptions(excludes=(str(tmp_path / "b") + "/*",))) == ["keep.jpg", "raw/skip.jpg"]
    # Hidden files come back on request; the default excludes still apply.
    assert names(tmp_path, ScanOptions(include_hidden=True)) == [".hidden/h.jpg", "b/drafts-1.png", "keep.jpg",
                                                                 "raw/skip.jpg"]


def test_symlinked_folders_and_loops(tmp_path):
    from clipsearch.scanner import ScanOptions

    touch(tmp_path, "a/one.jpg", "elsewhere/two.jpg")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    root = tmp_path / "a"
    assert names(root) == ["one.jpg"]
    found = list(scan(resolve_roots([root]), ScanOptions(follow_symlinks=True)))
    ok = sorted(os.path.relpath(f.path, root) for f in found if not f.problem)
    assert ok == ["link/two.jpg", "one.jpg"]
    [loop] = [f for f in found if f.problem]
    assert loop.path.endswith("loop") and "symlink loop" in loop.problem


def test_symlinked_files_are_followed_only_with_follow_symlinks(tmp_path):
    from clipsearch.scanner import ScanOptions

    touch(tmp_path, "root/own.jpg", "outside/secret.jpg")
    (tmp_path / "root" / "link.jpg").symlink_to(tmp_path / "outside" / "secret.jpg")
    root = tmp_path / "root"
    assert names(root) == ["own.jpg"]  # a link to a file is skipped, as a link to a folder is
    assert names(root, ScanOptions(follow_symlinks=True)) == ["link.jpg", "own.jpg"]
    # A file named as a root is taken as given, link or not.
    assert [f.path for f in scan(resolve_roots([root / "link.jpg"]))] == [str(root / "link.jpg")]


def test_undecodable_names_are_flagged_with_a_printable_path(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"
    with open(raw, "wb") as f:
        f.write(b"x")
    [found] = list(scan(resolve_roots([tmp_path])))
    assert "not valid UTF-8" in found.problem
    found.path.encode("utf-8")  # storable
    assert found.path.endswith("caf\\xe9.jpg")


def test_an_unreadable_folder_is_a_problem_not_a_crash(tmp_path, monkeypatch):
    touch(tmp_path, "ok/a.jpg", "locked/b.jpg")
    locked = tmp_path / "locked"
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads everything: make the folder refuse the way it would for a user
        real = os.scandir
        monkeypatch.setattr(os, "scandir", lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                            if str(p) == str(locked) else real(p))
    try:
        found = {os.path.relpath(f.path, tmp_path): f.problem for f in scan(resolve_roots([tmp_path]))}
    finally:
        locked.chmod(0o755)
    assert found == {"ok/a.jpg": None, "locked": "cannot list folder: Permission denied"}


def test_raw_files_are_skipped_when_the_camera_jpeg_sits_beside_them(tmp_path):
    touch(tmp_path, "IMG_1.CR2", "IMG_1.JPG", "IMG_2.nef", "DSC_3.dng", "DSC_3.jpeg")
    assert names(tmp_path) == ["DSC_3.jpeg", "IMG_1.JPG", "IMG_2.nef"]
