"""Pictures of evaluations: a confusion-matrix heatmap and the CLIP tutorial's image x
label similarity matrix with thumbnails. Needs matplotlib (``pip install 'clipsearch[plot]'``).

Each function draws from the same result object that ``--json`` prints, and returns the
array it drew, so the tests can hold the picture to the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .results import Evaluation, SimilarityMatrix

DPI = 100
_THUMB = 96  # pixels of each thumbnail before matplotlib scales it into its cell


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise InputError("drawing plots needs matplotlib", hint="pip install 'clipsearch[plot]'") from exc
    matplotlib.use("Agg")  # files only: never open a window or need a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        raise InputError(f"cannot tell a picture format from {path.name!r}", hint="name the file .png, .svg or .pdf")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)


def confusion_figure(result: Evaluation, path: str | Path) -> np.ndarray:
    """A heatmap of ``result``'s confusion matrix, each row (true label) as shares of its
    images, with the counts written in the cells. Returns the shares drawn."""
    plt = _pyplot()
    counts = np.asarray(result.confusion, np.float64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(result.labels)
    side = max(4.0, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    try:
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), result.labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), result.labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 30:
            for t in range(n):
                for p in range(n):
                    if counts[t, p]:
                        ax.text(p, t, int(counts[t, p]), ha="center", va="center", fontsize=7,
                                color="white" if shares[t, p] > 0.5 else "black")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true label's images")
        ax.set_title(f"{result.classifier} ({result.source}): top-1 {result.top1:.3f} on {result.images} images",
                     fontsize=10)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return shares


def similarity_figure(result: SimilarityMatrix, path: str | Path) -> np.ndarray:
    """Labels down the side, images along the bottom as thumbnails, and each cell the
    cosine similarity of that image to that label's text embedding. Returns the matrix
    drawn (labels x images)."""
    from PIL import Image, ImageOps

    plt = _pyplot()
    cosine = np.asarray(result.cosine, np.float64).T  # labels x images
    n_labels, n_images = cosine.shape
    cell = 0.7  # inches: square cells, so the thumbnails keep their shape
    fig, ax = plt.subplots(figsize=(cell * n_images + 2.5, cell * (n_labels + 1.1) + 1.0))
    try:
        ax.imshow(cosine, cmap="viridis")
        ax.set_yticks(range(n_labels), result.labels, fontsize=9)
        ax.set_xticks([])
        for i, path_i in enumerate(result.paths):
            try:
                with Image.open(path_i) as im:
                    # The centre square, as the model itself sees a picture.
                    thumb = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (_THUMB, _THUMB))
                ax.imshow(np.asarray(thumb), extent=(i - 0.5, i + 0.5, -1.6, -0.6), origin="upper")
            except OSError:
                pass  # a file gone since it was read: its column stays, unlabelled
        if n_labels * n_images <= 400:
            middle = (cosine.min() + cosine.max()) / 2  # viridis is bright above it
            for lab in range(n_labels):
                for img in range(n_images):
                    ax.text(img, lab, f"{cosine[lab, img]:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if cosine[lab, img] > middle else "white")
        ax.set_xlim(-0.5, n_images - 0.5)
        ax.set_ylim(n_labels - 0.5, -1.65)
        ax.set_title("cosine similarity between image and label embeddings", fontsize=10)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return cosine
