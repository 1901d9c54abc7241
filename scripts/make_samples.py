"""Draw the sample images in data/samples: two of every colour and shape of the demo world.

    python scripts/make_samples.py
"""

from pathlib import Path

from clipsearch import demoworld

OUT = Path(__file__).resolve().parents[1] / "data" / "samples"

if __name__ == "__main__":
    for old in OUT.glob("*.jpg"):
        old.unlink()
    # JPEG keeps the noisy backgrounds small; sizes span thumbnails to small photos.
    written = demoworld.write_images(OUT, 96, seed=2026, size_range=(64, 400), fmt="jpg")
    print(f"wrote {len(written)} images to {OUT}")
