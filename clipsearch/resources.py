"""Where the files that ship with clipsearch live: the demo model and the migrations.

In a source checkout (and an editable install) they sit at the repository root, in
``data/`` and ``migrations/``. A wheel carries them inside the package, under
``clipsearch/_bundled/`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_BUNDLED = _PACKAGE / "_bundled"
_CHECKOUT = _PACKAGE.parent


def bundled(name: str) -> Path:
    """The folder ``name`` (``data`` or ``migrations``) as shipped with this install."""
    for base in (_BUNDLED, _CHECKOUT):
        candidate = base / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"clipsearch is installed without its {name!r} folder; reinstall the package")


def demo_model_dir() -> Path:
    return bundled("data") / "demo_model"


def migrations_dir() -> Path:
    return bundled("migrations")
