"""Is one picture the same as another, up to a re-encode, a resize or a light crop?

CLIP similarity cannot decide it: on the demo model different pictures of one colour
and shape reach cosine 0.9995, above most JPEG re-encodes of one picture, and 2-10%
crops score 0.88-0.9996 against their original. ``duplicates`` therefore sends every
pair it is not sure of here, where the pixels decide.

Each picture is reduced once to a signature of ``SIGNATURE_BYTES`` (6,152) bytes: its
luma at 64 x 64 and its chroma at 32 x 32 (as JPEG subsamples it), stretched to a square
whatever its shape, and its size (``duplicates.py`` keeps them in the library folder by
content hash). Pairs are then compared thousands at a time, in numpy, in steps that are
each dearer than the last and each throw out most of what reaches them:

1. shape: aspect ratios that no crop of up to ``MAX_CROP`` explains;
2. envelope: at 8 x 8 px a crop of up to 10% moves no point by more than 0.8 px, so every
   pixel of a crop (or resize) lies within the range of the other picture's 3 x 3
   neighbourhood there; look-alikes with the shape elsewhere or of another size do not.
   Then again at 16 px, for what passes (3% of the candidate pairs of the demo world);
3. alignment: the crop region of one picture that maps onto the other, by Gauss-Newton
   on luma and chroma together, 8, then 16, then 32 px, from where a crop that kept the
   pixels' scale would be;
4. verdict (``_verdict``): the aligned pictures must agree everywhere, not on average,
   and in the mean. A re-encode, resize or crop differs by noise; a white circle and a
   white square in the same place differ by their corners, a red square and a red cross
   of the same brightness as their background by their colour at the corners, a near
   twin of a scene by its tint.

The limits come from the generated sets of ``benchmarks/bench_duplicates.py`` (and
``demoworld.write_duplicate_set``): duplicates reach 0.81 of ``MAX_DIFFERENCE``, distinct
pictures no less than 1.28 of it. Only Pillow and numpy: ``duplicates`` must not need torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .pixels import PixelSpec, model_pixels

SIZE = 64  # luma side
CHROMA = 32  # chroma side
_HEAD = 8  # the original's width and height, uint32 each
SIGNATURE_BYTES = _HEAD + SIZE * SIZE + 2 * CHROMA * CHROMA
# What decode workers make of a file for a signature (``model_pixels`` with this spec).
PIXEL_SPEC = PixelSpec(SIZE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bicubic", "squash")
MAX_CROP = 0.10  # the largest share of a side a crop may take off
_ROUNDING = 0.02  # of a side, lost to rounding when a picture is resized or cropped
_KEEP = 1 - MAX_CROP - _ROUNDING  # the smallest side a region may keep
_SMALL = 8  # side of the pictures of step 2, then again at 16
# Mean levels by which a duplicate may leave the other picture's envelope at 8 and 16 px
# (measured: up to 1.23 at 16 px for a 9% crop of a 97 px picture, JPEG-compressed).
_MAX_EXCESS = {8: 1.5, 16: 2.5}
_LEVELS = ((8, 2), (16, 2), (32, 1))  # (side, Gauss-Newton steps) of the alignment, coarse to fine
# Levels by which the worst block of an aligned duplicate may differ (``_verdict``).
_LUMA_BLOCK, _LUMA_LIMIT, _CHROMA_BLOCK, _CHROMA_LIMIT = 8, 12.5, 4, 13.5
_MEAN_LIMITS = (4.0, 5.0)  # for the mean difference of the whole picture, luma and chroma
MAX_DIFFERENCE = 1.0  # in units of those limits

_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
_CHUNK = 4096  # pairs compared at once


def signature(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """The signature of a picture from its ``(SIZE, SIZE, 3)`` uint8 pixels (``PIXEL_SPEC``)
    and the size of the original."""
    ycc = rgb.astype(np.float32) @ _YCC.T + np.array([0, 128, 128], np.float32)
    chroma = _box(ycc[..., 1:].transpose(2, 0, 1), SIZE // CHROMA)
    out = np.empty(SIGNATURE_BYTES, np.uint8)
    out[:_HEAD] = np.frombuffer(np.array([width, height], "<u4").tobytes(), np.uint8)
    out[_HEAD:_HEAD + SIZE * SIZE] = np.clip(np.rint(ycc[..., 0]), 0, 255).ravel()
    out[_HEAD + SIZE * SIZE:] = np.clip(np.rint(chroma), 0, 255).ravel()
    return out


def image_signature(image: Image.Image) -> np.ndarray:
    """The signature of a decoded RGB picture."""
    return signature(model_pixels(image, PIXEL_SPEC), *image.size)


def differences(signatures: "Signatures", a: np.ndarray, b: np.ndarray, crops: bool = True) -> np.ndarray:
    """For pairs of rows ``a[i], b[i]`` of the signatures, how much their pictures differ
    once aligned, in units of what a duplicate may show (``inf`` where a cheap test already
    tells them apart). The same picture, up to a re-encode, a resize or (with ``crops``) a
    crop of up to ``MAX_CROP``, stays within ``MAX_DIFFERENCE``; the order of a pair does
    not matter."""
    ia, ib = signatures.index(np.asarray(a, np.int64)), signatures.index(np.asarray(b, np.int64))
    out = np.full(len(ia), np.inf, np.float32)
    for start in range(0, len(ia), _CHUNK):
        stop = start + _CHUNK
        out[start:stop] = _compare(signatures, ia[start:stop], ib[start:stop], crops)
    return out


class Signatures:
    """Rows of a signature table (``(N, SIGNATURE_BYTES)`` uint8) made ready for
    comparisons: aspect ratios, and the 8 px pictures with their envelopes for step 2.
    With ``rows``, only those rows (pairs may name no others)."""

    def __init__(self, table: np.ndarray, rows: np.ndarray | None = None):
        self.table = table
        self.rows = np.arange(len(table)) if rows is None else np.unique(np.asarray(rows, np.int64))
        size = np.ascontiguousarray(table[self.rows, :_HEAD]).view("<u4").astype(np.float32)
        self.width, self.height = size[:, 0], size[:, 1]
        self.aspect = self.width / np.maximum(self.height, 1)
        parts = [_envelope(self.pictures(np.arange(start, min(start + 8192, len(self.rows))), _SMALL))
                 for start in range(0, len(self.rows), 8192)]
        # Whole levels are precise enough here, at a quarter of the memory (100k pictures: 58 MB).
        self.small, self.low, self.high = (np.concatenate([np.rint(p[k]).astype(np.uint8) for p in parts])
                                           if parts else np.empty((0, 3, _SMALL, _SMALL), np.uint8) for k in range(3))

    def index(self, rows: np.ndarray) -> np.ndarray:
        """Positions of table rows among those made ready."""
        return rows if len(self.rows) and self.rows[-1] == len(self.rows) - 1 else np.searchsorted(self.rows, rows)

    def luma(self, at: np.ndarray, side: int = SIZE) -> np.ndarray:
        """``(n, side, side)`` float32."""
        raw = self.table[self.rows[at], _HEAD:_HEAD + SIZE * SIZE].reshape(-1, SIZE, SIZE)
        return _mean_blocks(raw, SIZE // side)

    def chroma(self, at: np.ndarray, side: int = CHROMA) -> np.ndarray:
        """``(n, 2, side, side)`` float32."""
        raw = self.table[self.rows[at], _HEAD + SIZE * SIZE:].reshape(-1, 2, CHROMA, CHROMA)
        return _mean_blocks(raw, CHROMA // side)

    def pictures(self, at: np.ndarray, side: int) -> np.ndarray:
        """Luma and chroma at ``side`` px (at most ``CHROMA``): ``(n, 3, side, side)``."""
        return np.concatenate([self.luma(at, side)[:, None], self.chroma(at, side)], 1)


def _mean_blocks(raw: np.ndarray, f: int) -> np.ndarray:
    """Means of ``f`` x ``f`` blocks of uint8 pictures, as float32: summed as integers, ten
    times faster than in floats."""
    if f == 1:
        return raw.astype(np.float32)
    *lead, h, w = raw.shape
    sums = raw.reshape(*lead, h // f, f, w // f, f).sum((-3, -1), dtype=np.uint32)
    return sums.astype(np.float32) * np.float32(1 / (f * f))


def _envelope(small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pictures with the least and the most of each pixel's 3 x 3 neighbourhood."""
    n = small.shape[-1]
    padded = np.pad(small, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    low, high = small.copy(), small.copy()
    for i in range(3):
        for j in range(3):
            np.minimum(low, padded[..., i:i + n, j:j + n], out=low)
            np.maximum(high, padded[..., i:i + n, j:j + n], out=high)
    return small, low, high


def _excess(small, low, high) -> np.ndarray:
    """How far, in mean levels, pictures ``small`` leave envelopes ``(low, high)``."""
    return (np.maximum(0, small - high) + np.maximum(0, low - small)).mean((1, 2, 3))


def _box(x: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f`` x ``f`` blocks of the last two axes (``f`` a power of 2), halving
    the size one step at a time: strided additions, several times faster than ``mean``
    over a reshaped array."""
    while f > 1:
        x = (x[..., ::2, ::2] + x[..., 1::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, 1::2]) * np.float32(0.25)
        f //= 2
    return x


def _compare(sig: Signatures, ia: np.ndarray, ib: np.ndarray, crops: bool) -> np.ndarray:
    out = np.full(len(ia), np.inf, np.float32)
    keep = _KEEP if crops else 1 - _ROUNDING
    todo = np.arange(len(ia))
    # Each pair one way round (is b a crop of a?), then the other way for those still in doubt.
    for whole_of, part_of in ((ia, ib), (ib, ia)):
        whole, part = whole_of[todo], part_of[todo]
        q = sig.aspect[part] / sig.aspect[whole]  # the region's width over its height, in whole's units
        # Sides of n px are rounded by up to half a pixel on resizing and cropping.
        tol = 1 / np.minimum.reduce([sig.width[whole], sig.height[whole], sig.width[part], sig.height[part]]) + 0.005
        fits = np.flatnonzero((q * np.exp(-tol) <= 1 / keep) & (q * np.exp(tol) >= keep))  # step 1
        small = sig.small[part[fits]].astype(np.int16)
        fits = fits[_excess(small, sig.low[whole[fits]], sig.high[whole[fits]]) <= _MAX_EXCESS[8]]  # step 2
        if len(fits):
            w16 = _envelope(sig.pictures(whole[fits], 16))
            fits = fits[_excess(sig.pictures(part[fits], 16), w16[1], w16[2]) <= _MAX_EXCESS[16]]
        if len(fits):
            found = _aligned_difference(sig, whole[fits], part[fits], q[fits], tol[fits], keep)
            out[todo[fits]] = np.minimum(out[todo[fits]], found)
        todo = todo[out[todo] > MAX_DIFFERENCE]
    return out


class _Region:
    """Regions of the wholes by their edges (left, top, right, bottom, in units of the
    side), kept to what a crop can be: each edge within its bounds (sides of at least
    ``keep``), and, through the steps of ``_gauss_newton``, the part's aspect ratio ``q``
    give or take ``tol`` (in log units). Edges rather than a corner and a size, so that a
    crop that kept one edge of the picture (most do) sits on a bound of one parameter."""

    def __init__(self, sig: Signatures, whole, part, q, tol, keep: float):
        self.q, self.tol, self.keep = q, tol, keep
        # Start where a crop that kept the pixels' scale would be (most crops), else at the
        # whole picture (a resize), else midway.
        w, h = sig.width[part] / sig.width[whole], sig.height[part] / sig.height[whole]
        as_crop = (w >= keep) & (w <= 1) & (h >= keep) & (h <= 1)
        as_resize = np.abs(np.log(q)) <= tol
        mid = (np.maximum(keep, keep / q) + np.minimum(1, 1 / q)) / 2
        h = np.where(as_crop, h, np.where(as_resize, 1.0, mid))
        w = np.where(as_crop, w, np.where(as_resize, 1.0, q * mid))
        self.edges = np.stack([(1 - w) / 2, (1 - h) / 2, (1 + w) / 2, (1 + h) / 2], 1).astype(np.float32)
        self.move(np.zeros_like(self.edges))

    @property
    def w(self) -> np.ndarray:
        return self.edges[:, 2] - self.edges[:, 0]

    @property
    def h(self) -> np.ndarray:
        return self.edges[:, 3] - self.edges[:, 1]

    def move(self, step: np.ndarray) -> None:
        e = self.edges + step
        e[:, :2] = np.clip(e[:, :2], 0, 1 - self.keep)
        e[:, 2:] = np.clip(e[:, 2:], self.keep, 1)
        e[:, 2:] = np.maximum(e[:, 2:], e[:, :2] + self.keep)
        self.edges = e

    def sample(self, img: np.ndarray, n: int) -> np.ndarray:
        return _sample(img, self.edges[:, 0], self.edges[:, 1], self.w, self.h, n)

    def off_aspect(self) -> np.ndarray:
        """How far, in log units beyond ``tol``, the regions are from the part's aspect ratio."""
        r = np.log(self.w / (self.q * self.h))
        return r - np.clip(r, -self.tol, self.tol)


def _aligned_difference(sig: Signatures, whole, part, q, tol, keep: float) -> np.ndarray:
    """Steps 3 and 4 for pairs that passed the cheap tests."""
    image, template = sig.pictures(whole, CHROMA), sig.pictures(part, CHROMA)
    region = _Region(sig, whole, part, q, tol, keep)
    for side, steps in _LEVELS:
        img, tpl = _box(image, CHROMA // side), _box(template, CHROMA // side)
        for _ in range(steps):
            region.move(_gauss_newton(region, img, tpl))
    luma = region.sample(sig.luma(whole), SIZE) - sig.luma(part)
    chroma = region.sample(sig.chroma(whole), CHROMA) - sig.chroma(part)
    # A picture under SIZE px has no detail at SIZE: compare luma at the detail both have
    # (a 40% resize of a 100 px picture differs from it by its blur otherwise).
    short = np.minimum.reduce([sig.width[whole], sig.height[whole], sig.width[part], sig.height[part]])
    for f in (2, 4):
        small = np.flatnonzero(short < SIZE * 2 // f)
        if len(small):
            luma[small] = np.repeat(np.repeat(_box(luma[small], f), f, 1), f, 2)
    return _verdict(luma, chroma)


def _verdict(luma: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """How far the aligned pictures differ, in units of what a duplicate may show, the
    worst of: the mean absolute difference of each 8 x 8 px block of luma (at 64 px); the
    mean signed difference of each 4 x 4 px block of chroma (at 32 px, Cb and Cr
    together), where colour edges that misalign by a fraction of a pixel average out
    while a colour that differs does not; and the mean difference of the whole, luma and
    chroma, which a re-encode, resize or crop keeps within 2 levels and another picture
    of a near twin of a scene (another tint, another exposure) does not. The outer 4 px
    of luma are left out: there the smaller picture's thumbnail saw only its side of a
    crop line, the other picture's both."""
    edge = SIZE // 16
    luma = luma[:, edge:-edge, edge:-edge]
    worst = [_box(np.abs(luma), _LUMA_BLOCK).reshape(len(luma), -1).max(1) / _LUMA_LIMIT,
             np.abs(_box(chroma, _CHROMA_BLOCK)).sum(1).reshape(len(chroma), -1).max(1) / _CHROMA_LIMIT,
             np.abs(luma.mean((1, 2))) / _MEAN_LIMITS[0],
             np.abs(chroma.mean((2, 3))).sum(1) / _MEAN_LIMITS[1]]
    return np.maximum.reduce(worst)


def _gauss_newton(region: _Region, img: np.ndarray, tpl: np.ndarray) -> np.ndarray:
    """The Gauss-Newton step for the edges of ``region`` of pictures ``img`` that brings it
    closer to ``tpl`` (``(P, C, n, n)``, all channels together); a stiff penalty keeps its
    aspect ratio that of the part."""
    n = tpl.shape[-1]
    warped = region.sample(img, n)
    gy, gx = np.gradient(warped, axis=(2, 3))
    gx *= (n / region.w)[:, None, None, None]  # per unit of the whole's side
    gy *= (n / region.h)[:, None, None, None]
    u = (np.arange(n, dtype=np.float32) + 0.5) / n
    jac = (gx * (1 - u), gy * (1 - u[:, None]), gx * u, gy * u[:, None])  # left, top, right, bottom
    resid = warped - tpl
    hess = np.empty((len(resid), 4, 4), np.float32)
    for i in range(4):
        for j in range(i, 4):
            hess[:, i, j] = hess[:, j, i] = np.einsum("pcyx,pcyx->p", jac[i], jac[j])
    grad = np.stack([np.einsum("pcyx,pcyx->p", g, resid) for g in jac], 1)
    scale = np.trace(hess, axis1=1, axis2=2) / 4 + 1e-6
    # The aspect penalty: d log(w / (q h)) / d(left, top, right, bottom).
    da = np.stack([-1 / region.w, 1 / region.h, 1 / region.w, -1 / region.h], 1)
    stiff = (10 * scale * region.h ** 2)[:, None, None]  # da is of order 1/h
    hess += stiff * da[:, :, None] * da[:, None, :]
    grad += stiff[:, 0] * da * region.off_aspect()[:, None]
    hess += np.eye(4, dtype=np.float32) * (1e-3 * scale)[:, None, None]
    return np.clip(-np.linalg.solve(hess, grad[..., None])[..., 0], -0.05, 0.05)


def _sample(img: np.ndarray, x0, y0, w, h, n: int) -> np.ndarray:
    """Bilinear samples of the regions ``(x0, y0, w, h)`` (in units of the side) of pictures
    ``(P, [C,] s, s)``, at ``n`` x ``n`` points: ``(P, [C,] n, n)``. As products with
    interpolation matrices, which BLAS runs far faster than numpy gathers the pixels."""
    s = img.shape[-1]
    rows, cols = _interpolation(y0, h, n, s), _interpolation(x0, w, n, s).transpose(0, 2, 1)
    if img.ndim == 4:
        rows, cols = rows[:, None], cols[:, None]
    return rows @ img @ cols


def _interpolation(start, length, n: int, s: int) -> np.ndarray:
    """``(P, n, s)``: rows that sample ``n`` points over ``[start, start + length]`` of a
    side of ``s`` px, by linear interpolation."""
    u = (np.arange(n, dtype=np.float32) + 0.5) / n
    x = np.clip((start[:, None] * s + length[:, None] * s * u) - 0.5, 0, s - 1).astype(np.float32)
    i = np.minimum(x.astype(np.int64), s - 2)
    f = x - i
    out = np.zeros((len(x), n, s), np.float32)
    p, r = np.arange(len(x))[:, None], np.arange(n)[None, :]
    out[p, r, i] = 1 - f
    out[p, r, i + 1] = f
    return out
