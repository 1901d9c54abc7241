"""Finding image files under the paths the user named."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import PathNotFoundError
from .images import is_image_path


@dataclass(frozen=True)
class FoundFile:
    path: str  # absolute
    size: int
    mtime_ns: int


def resolve_roots(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Absolute roots, checked to exist. Symlinks in them are kept as the user wrote them."""
    roots = []
    for p in paths:
        root = Path(os.path.abspath(os.path.expanduser(os.fspath(p))))
        if not root.exists():
            raise PathNotFoundError(f"no such file or folder: {p}")
        roots.append(root)
    return roots


def scan(roots: Iterable[Path]) -> Iterator[FoundFile]:
    """Every image file under ``roots``, skipping hidden files and folders."""
    for root in roots:
        if root.is_file():
            if is_image_path(root):
                st = root.stat()
                yield FoundFile(str(root), st.st_size, st.st_mtime_ns)
            continue
        yield from _walk(str(root))


def _walk(folder: str) -> Iterator[FoundFile]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return  # unreadable or vanished folder: nothing to index there
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path)
            elif entry.is_file() and is_image_path(Path(entry.name)):
                st = entry.stat()
                yield FoundFile(entry.path, st.st_size, st.st_mtime_ns)
        except OSError:
            continue  # vanished between listing and stat
