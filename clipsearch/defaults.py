"""The choices and defaults that the CLI, the web API and the library share.

Kept apart, importing nothing heavy, so that ``clipsearch --help`` (and a search that a
running service answers) can use them without loading the library (torch, FAISS,
SQLAlchemy); every other module takes them from here.
"""

import os
from pathlib import Path

ENV_LIBRARY = "CLIPSEARCH_LIBRARY"  # the library folder, when none is given
ENV_DB_URL = "CLIPSEARCH_DB_URL"  # the PostgreSQL database for a library's metadata

ENGINES = ("local", "ray")  # where an index run decodes and embeds (cluster.py)
SORT_ORDERS = ("score", "date", "path")  # how search results are ordered

# watch: seconds of quiet that end a batch of file events, and between full re-scans.
WATCH_DEBOUNCE_S = 1.0
WATCH_RESCAN_S = 3600.0

# Cosine similarity from which pairs are compared as whole pictures (re-encodes, resizes).
# It decides no pair by itself any more: on the demo model different pictures of one
# colour and shape reach 0.9995 and JPEG re-encodes score 0.93 and up (duplicates.py).
DUPLICATE_THRESHOLD = 0.995
# From here up to the threshold, pairs are searched for crops too: 2-10% crops score
# 0.88-0.9996 against their original on the demo model, 1% of them below 0.9.
CROP_CANDIDATE = 0.9

# tag: a label is kept from this score, and at most this many per image (None: all).
TAG_THRESHOLD = 0.1
TAG_TOP_K = 5


def default_library_dir() -> Path:
    """``$CLIPSEARCH_LIBRARY``, else a per-user data folder."""
    env = os.environ.get(ENV_LIBRARY)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("clipsearch", appauthor=False)) / "library"


def library_folder(path: str | os.PathLike | None) -> Path:
    """The library folder ``path`` names, absolute; by default :func:`default_library_dir`."""
    return (Path(path).expanduser() if path else default_library_dir()).absolute()
