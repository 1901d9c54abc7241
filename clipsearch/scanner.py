"""Finding image files under the paths the user named.

The walk never fails as a whole: an unreadable folder, a file that vanishes between
listing and ``stat``, a symlink loop or a file name that is not valid UTF-8 becomes a
:class:`ScanProblem` that the indexer reports, and the walk goes on.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PathNotFoundError
from .images import RAW_EXTENSIONS, is_image_path

# Folders and files that are never photos: version control, package caches, NAS and
# desktop thumbnail stores, macOS AppleDouble companions, trash folders.
DEFAULT_EXCLUDES: tuple[str, ...] = (".git", "node_modules", "@eaDir", ".thumbnails", "._*", ".Trash*",
                                     "$RECYCLE.BIN")


@dataclass(frozen=True)
class ScanOptions:
    include_hidden: bool = False
    follow_symlinks: bool = False
    excludes: tuple[str, ...] = ()
    default_excludes: tuple[str, ...] = field(default=DEFAULT_EXCLUDES)

    def excluded(self, name: str, path: str) -> bool:
        if name.startswith(".") and not self.include_hidden:
            return True
        return any(fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(path, pat)
                   for pat in self.excludes + self.default_excludes)

    def excludes_below(self, path: Path, root: Path) -> bool:
        """Whether a scan of ``root`` would leave out ``path``, a file or folder below it."""
        here = root
        for part in path.relative_to(root).parts:
            here = here / part
            if self.excluded(part, str(here)):
                return True
        return False


@dataclass(frozen=True)
class FoundFile:
    path: str  # absolute; for an undecodable name, a printable escaped form
    size: int
    mtime_ns: int
    problem: str | None = None  # set when the file cannot be indexed as found


def resolve_roots(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Absolute roots, checked to exist. Symlinks in them are kept as the user wrote them."""
    roots = []
    for p in paths:
        root = Path(os.path.abspath(os.path.expanduser(os.fspath(p))))
        if not root.exists():
            raise PathNotFoundError(f"no such file or folder: {p}")
        roots.append(root)
    return roots


def scanned_part(paths: Iterable[str | os.PathLike], roots: list[Path], options: ScanOptions) -> list[Path]:
    """Those of ``paths`` (absolute, existing or not) that a scan of ``roots`` would walk,
    less any that lies inside another: the smallest set of roots that covers them."""
    given = {p for p in (Path(os.path.abspath(os.path.expanduser(os.fspath(p)))) for p in paths)
             if any((p == r or r in p.parents) and not options.excludes_below(p, r) for r in roots)}
    return sorted(p for p in given if not any(q in p.parents for q in given))


def scan(roots: Iterable[Path], options: ScanOptions = ScanOptions()) -> Iterator[FoundFile]:
    """Every image file under ``roots``, in a stable order."""
    for root in roots:
        if not root.exists():
            continue  # gone since it was named (Library.update names what vanished): nothing here now
        if root.is_file():
            if is_image_path(root):
                st = root.stat()
                yield FoundFile(str(root), st.st_size, st.st_mtime_ns)
            continue
        st = root.stat()
        yield from _walk(str(root), options, {(st.st_dev, st.st_ino)})


def _printable(path: str) -> str | None:
    """None if ``path`` is valid UTF-8, else an escaped form that SQLite can store."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _walk(folder: str, options: ScanOptions, ancestors: set[tuple[int, int]]) -> Iterator[FoundFile]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        yield FoundFile(_printable(folder) or folder, 0, 0, problem=f"cannot list folder: {exc.strerror or exc}")
        return
    lower_names = {e.name.lower() for e in entries}
    for entry in entries:
        if options.excluded(entry.name, entry.path):
            continue
        stem, ext = os.path.splitext(entry.name.lower())
        if ext in RAW_EXTENSIONS and (stem + ".jpg" in lower_names or stem + ".jpeg" in lower_names):
            continue  # the camera's own JPEG of the same shot is indexed instead
        try:
            if entry.is_dir(follow_symlinks=options.follow_symlinks):
                st = entry.stat(follow_symlinks=True)
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    yield FoundFile(_printable(entry.path) or entry.path, 0, 0,
                                    problem="symlink loop: folder already being scanned")
                    continue
                yield from _walk(entry.path, options, ancestors | {key})
            # A link to a file is followed only when links are (as for folders): else a link
            # inside a root would bring in, and show the size and hash of, a file outside it.
            elif is_image_path(Path(entry.name)) and entry.is_file(follow_symlinks=options.follow_symlinks):
                st = entry.stat()
                escaped = _printable(entry.path)
                if escaped is not None:
                    yield FoundFile(escaped, st.st_size, st.st_mtime_ns,
                                    problem="file name is not valid UTF-8; rename the file to index it")
                else:
                    yield FoundFile(entry.path, st.st_size, st.st_mtime_ns)
        except OSError:
            continue  # vanished between listing and stat
