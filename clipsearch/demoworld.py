"""The demo world: one coloured shape per image, drawn by two independent renderers.

The bundled demo model is trained on this world (see ``scripts/train_demo_model.py``),
the sample images in ``data/samples`` come from it, and the tests draw fresh images
from it. Two renderers exist on purpose: the model trains on the ``pil`` renderer and
is evaluated on the ``sdf`` one, so a good score cannot come from learning one
rasteriser's quirks.

Only numpy and Pillow are needed; nothing here imports torch.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "green": (35, 160, 45),
    "blue": (30, 70, 215),
    "yellow": (240, 215, 30),
    "purple": (135, 40, 165),
    "orange": (245, 135, 20),
    "black": (18, 18, 18),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise")
RENDERERS: tuple[str, ...] = ("pil", "sdf")


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image; rendering a scene is deterministic."""

    colour: str
    shape: str
    width: int
    height: int
    cx: float  # centre, in pixels
    cy: float
    radius: float  # outer radius, in pixels
    angle: float  # radians
    fill: tuple[int, int, int]
    background: str
    bg_a: tuple[int, int, int]
    bg_b: tuple[int, int, int]
    seed: int

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


def _far_enough(a, b, min_dist: float = 110.0) -> bool:
    return math.dist(a, b) >= min_dist


def _background_colour(rng: random.Random, avoid: tuple[int, int, int]) -> tuple[int, int, int]:
    # Muted, low-saturation tones, so that no background reads as one of the named colours,
    # kept well away from the shape's own colour so the shape stays visible.
    for _ in range(100):
        grey = rng.uniform(70, 200)
        tint = [rng.uniform(-25, 25) for _ in range(3)]
        c = tuple(int(max(0, min(255, grey + t))) for t in tint)
        if _far_enough(c, avoid):
            return c
    return (128, 128, 128) if _far_enough((128, 128, 128), avoid) else (200, 200, 200)


def random_scene(
    rng: random.Random,
    colour: str | None = None,
    shape: str | None = None,
    size_range: tuple[int, int] = (64, 1000),
) -> Scene:
    """Draw a random scene; ``colour`` and ``shape`` may be fixed."""
    colour = colour or rng.choice(list(COLOURS))
    shape = shape or rng.choice(SHAPES)
    lo, hi = size_range
    # Log-uniform sizes: as many small thumbnails as large photos.
    long_side = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    aspect = rng.choice([1.0, 1.0, rng.uniform(0.6, 1.0)])
    short_side = max(lo, int(round(long_side * aspect)))
    width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    cx, cy, radius = _placement(rng, width, height)
    base = COLOURS[colour]
    fill = tuple(int(max(0, min(255, v + rng.uniform(-18, 18)))) for v in base)
    background = rng.choice(BACKGROUNDS)
    bg_a = _background_colour(rng, fill)
    bg_b = _background_colour(rng, fill)
    return Scene(colour, shape, width, height, cx, cy, radius, rng.uniform(0, 2 * math.pi),
                 fill, background, bg_a, bg_b, rng.randrange(2**31))


# ---------------------------------------------------------------------------------------
# Geometry shared by both renderers: every shape is a union of convex polygons or discs.

def _placement(rng: random.Random, width: int, height: int) -> tuple[float, float, float]:
    """A shape's centre and radius: the CLIP preprocessing centre-crops the short side, so
    the shape lives in the central square."""
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    radius = rng.uniform(0.17, 0.42) * side
    margin = radius * 1.05
    return x0 + rng.uniform(margin, side - margin), y0 + rng.uniform(margin, side - margin), radius


def _regular(n: int, r: float, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * i / n), cy + r * math.sin(angle + 2 * math.pi * i / n))
            for i in range(n)]


def _rotated_rect(cx, cy, half_w, half_h, angle) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    pts = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _polygons(scene: Scene) -> list[list[tuple[float, float]]]:
    """Convex pieces whose union is the shape (discs are handled separately)."""
    r, a, cx, cy = scene.radius, scene.angle, scene.cx, scene.cy
    if scene.shape == "square":
        return [_regular(4, r, a, cx, cy)]
    if scene.shape == "triangle":
        return [_regular(3, r, a, cx, cy)]
    if scene.shape == "cross":
        arm = r * 0.32
        return [_rotated_rect(cx, cy, r, arm, a), _rotated_rect(cx, cy, arm, r, a)]
    if scene.shape == "star":
        inner = r * 0.42
        outer_pts = _regular(5, r, a, cx, cy)
        inner_pts = _regular(5, inner, a + math.pi / 5, cx, cy)
        pieces = [inner_pts]
        for i in range(5):
            pieces.append([inner_pts[i - 1], outer_pts[i], inner_pts[i]])
        return pieces
    return []


def _background(scene: Scene) -> np.ndarray:
    h, w = scene.height, scene.width
    a = np.array(scene.bg_a, np.float32)
    b = np.array(scene.bg_b, np.float32)
    if scene.background == "plain":
        img = np.broadcast_to(a, (h, w, 3)).copy()
    elif scene.background == "gradient":
        rng = random.Random(scene.seed)
        theta = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xs / max(w - 1, 1)) * math.cos(theta) + (ys / max(h - 1, 1)) * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = a + (b - a) * t[..., None]
    else:
        nrng = np.random.default_rng(scene.seed)
        img = a + nrng.normal(0, 18, (h, w, 3)).astype(np.float32)
    return img


def _render_pil(scene: Scene, supersample: int) -> Image.Image:
    s = supersample
    mask = Image.new("L", (scene.width * s, scene.height * s), 0)
    draw = ImageDraw.Draw(mask)
    scale = lambda pts: [(x * s, y * s) for x, y in pts]  # noqa: E731
    if scene.shape in ("circle", "ring"):
        r = scene.radius * s
        cx, cy = scene.cx * s, scene.cy * s
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if scene.shape == "ring":
            ri = r * 0.58
            draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    for poly in _polygons(scene):
        draw.polygon(scale(poly), fill=255)
    if s > 1:
        mask = mask.resize((scene.width, scene.height), Image.Resampling.BOX)
    alpha = np.asarray(mask, np.float32)[..., None] / 255.0
    return _compose(scene, alpha)


def _render_sdf(scene: Scene, softness: float) -> Image.Image:
    # Coverage from an (approximate) signed distance field: a different rasteriser with
    # different edge profiles from Pillow's polygon filler.
    ys, xs = np.mgrid[0:scene.height, 0:scene.width].astype(np.float32)
    xs += 0.5
    ys += 0.5
    if scene.shape in ("circle", "ring"):
        d = np.hypot(xs - scene.cx, ys - scene.cy)
        sd = d - scene.radius
        if scene.shape == "ring":
            sd = np.maximum(sd, scene.radius * 0.58 - d)
    else:
        sd = np.full(xs.shape, np.inf, np.float32)
        for poly in _polygons(scene):
            # Convex polygon: the largest signed distance to its edge lines.
            piece = np.full(xs.shape, -np.inf, np.float32)
            n = len(poly)
            area2 = sum(poly[i][0] * poly[(i + 1) % n][1] - poly[(i + 1) % n][0] * poly[i][1] for i in range(n))
            orient = 1.0 if area2 > 0 else -1.0
            for i in range(n):
                (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % n]
                ex, ey = x2 - x1, y2 - y1
                length = math.hypot(ex, ey) or 1.0
                # Outward normal for this polygon's orientation.
                nx, ny = orient * ey / length, -orient * ex / length
                piece = np.maximum(piece, (xs - x1) * nx + (ys - y1) * ny)
            sd = np.minimum(sd, piece)
    alpha = np.clip(0.5 - sd / softness, 0.0, 1.0)[..., None]
    return _compose(scene, alpha)


def _compose(scene: Scene, alpha: np.ndarray) -> Image.Image:
    bg = _background(scene)
    fg = np.array(scene.fill, np.float32)
    img = bg * (1 - alpha) + fg * alpha
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def render(
    scene: Scene,
    renderer: str = "pil",
    *,
    supersample: int = 4,
    softness: float = 1.0,
    blur: float = 0.0,
    jpeg_quality: int | None = None,
) -> Image.Image:
    """Draw ``scene``; ``blur`` and ``jpeg_quality`` degrade the result like a real photo."""
    if renderer == "pil":
        img = _render_pil(scene, supersample)
    elif renderer == "sdf":
        img = _render_sdf(scene, softness)
    else:
        raise ValueError(f"unknown renderer {renderer!r}; expected one of {RENDERERS}")
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    if jpeg_quality is not None:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=jpeg_quality)
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


def random_style(rng: random.Random) -> dict:
    """Random degradations: anti-aliasing, blur and JPEG quality."""
    return {
        "supersample": rng.choice([1, 2, 4]),
        "softness": rng.uniform(0.5, 2.5),
        "blur": rng.choice([0.0, 0.0, rng.uniform(0.3, 2.0)]),
        "jpeg_quality": rng.choice([None, rng.randint(25, 95)]),
    }


def write_images(
    folder: str | Path,
    count: int,
    seed: int = 0,
    renderer: str = "pil",
    size_range: tuple[int, int] = (64, 1000),
    fmt: str = "png",
) -> list[tuple[Path, Scene]]:
    """Write ``count`` images named after their label, cycling through every colour and shape."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    out = []
    for i in range(count):
        colour, shape = combos[(i + seed) % len(combos)]
        scene = random_scene(rng, colour, shape, size_range)
        img = render(scene, renderer, **random_style(rng))
        path = folder / f"{colour}_{shape}_{i:04d}.{fmt}"
        img.save(path, quality=90) if fmt in ("jpg", "jpeg") else img.save(path)
        out.append((path, scene))
    return out


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields, a few discs and sensor-like noise: not the demo world, but a
    picture that compresses like a photo (2-4 MB as a 12-megapixel JPEG), for benchmarks
    and checks."""
    low = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(width // 40, width // 6))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    a = np.asarray(img, dtype=np.int16)
    a = a + rng.normal(0, 4, a.shape).astype(np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------
# A folder with known duplicates, for ``duplicates``' tests and benchmark.

# How a duplicate is made from its original.
DUPLICATE_KINDS: tuple[str, ...] = ("copy", "re-encode", "resize", "crop", "crop+re-encode")


@dataclass(frozen=True)
class Written:
    """One file of :func:`write_duplicate_set`: files of one ``picture`` are duplicates."""

    path: Path
    picture: int  # the original's number; distinct pictures have distinct numbers
    kind: str  # "original", or one of DUPLICATE_KINDS, with its parameter: "crop 6%"


def lookalike_scenes(rng: random.Random, count: int, size_range: tuple[int, int] = (96, 400)) -> list[Scene]:
    """``count`` distinct scenes made to look alike in families of four: one family shares
    a colour and shape (and background), another a place, size and background with another
    shape (a white circle and a white square), another all but the colour, another only a
    background. Every other attribute is drawn afresh, so no scene is a crop of another."""
    from dataclasses import replace

    scenes: list[Scene] = []
    while len(scenes) < count:
        first = random_scene(rng, size_range=size_range)
        family = len(scenes) // 4 % 4
        # Siblings never repeat a shape or a colour: each differs from every other one.
        shapes = rng.sample([s for s in SHAPES if s != first.shape], 3)
        colours = rng.sample([c for c in COLOURS if c != first.colour], 3)
        family_members = [first]
        for i in range(3):
            if family == 0:  # same colour, shape, size and background; another place and angle
                # Radii 20% apart: a shape 10% larger and elsewhere on a plain background is
                # what a 10% crop of the other picture would show, not another picture.
                cx, cy, radius = _placement(rng, first.width, first.height)
                if any(max(radius, s.radius) / min(radius, s.radius) < 1.2 for s in family_members):
                    continue
                other = replace(first, cx=cx, cy=cy, radius=radius, angle=rng.uniform(0, 2 * math.pi),
                                seed=rng.randrange(2**31))
            elif family == 1:  # the same place, size, colour and background; another shape
                other = replace(first, shape=shapes[i], seed=rng.randrange(2**31))
            elif family == 2:  # all but the colour
                fill = tuple(int(max(0, min(255, v + rng.uniform(-18, 18)))) for v in COLOURS[colours[i]])
                if not _far_enough(fill, first.bg_a):
                    continue
                other = replace(first, colour=colours[i], fill=fill)
            else:  # only the background (noise and gradient included) and the size
                fill = tuple(int(max(0, min(255, v + rng.uniform(-18, 18)))) for v in COLOURS[colours[i]])
                if not _far_enough(fill, first.bg_a):
                    continue
                cx, cy, radius = _placement(rng, first.width, first.height)
                other = replace(first, colour=colours[i], shape=shapes[i], fill=fill, cx=cx, cy=cy, radius=radius,
                                angle=rng.uniform(0, 2 * math.pi))
            family_members.append(other)
        scenes += family_members[1:] + [first]
    return scenes[:count]


def write_duplicate_set(folder: str | Path, originals: int, duplicated: int, seed: int = 0,
                        size_range: tuple[int, int] = (96, 400)) -> list[Written]:
    """Write ``originals`` distinct look-alike pictures (:func:`lookalike_scenes`) and, for
    ``duplicated`` of them, one to three duplicates each: byte copies, JPEG re-encodes,
    resizes (40-80%, or up 125%), and crops that take 2-10% off one or both sides,
    some re-encoded too."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out: list[Written] = []
    for n, scene in enumerate(lookalike_scenes(rng, originals, size_range)):
        image = render(scene, rng.choice(RENDERERS), **random_style(rng))
        path = folder / f"{n:05d}.png"
        image.save(path)
        out.append(Written(path, n, "original"))
        if n >= duplicated:
            continue
        for d in range(rng.randint(1, 3)):
            kind = rng.choice(DUPLICATE_KINDS)
            target = folder / f"{n:05d}_{d}.png"
            if kind == "copy":
                target.write_bytes(path.read_bytes())
                out.append(Written(target, n, kind))
                continue
            copy, label = image, kind
            if kind == "resize":
                share = rng.choice([rng.uniform(0.4, 0.8), 1.25])
                copy = image.resize((max(16, round(image.width * share)), max(16, round(image.height * share))),
                                    Image.Resampling.LANCZOS)
                label = f"resize {share:.0%}"
            if kind.startswith("crop"):
                cut = rng.uniform(0.02, 0.10)
                cut_x, cut_y = rng.choice([(cut, cut), (cut, 0.0), (0.0, cut), (cut, rng.uniform(0, cut))])
                w, h = round(image.width * (1 - cut_x)), round(image.height * (1 - cut_y))
                x, y = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
                copy = image.crop((x, y, x + w, y + h))
                label = kind.replace("crop", f"crop {max(cut_x, cut_y):.0%}")
            if kind.endswith("re-encode"):
                target = target.with_suffix(".jpg")
                copy.save(target, "JPEG", quality=rng.randint(35, 90))
            else:
                copy.save(target)
            out.append(Written(target, n, label))
    return out
