"""Classifiers over image vectors: zero-shot heads made of words, few-shot linear probes.

Both are a *head*: one weight vector and bias per label, giving an image vector ``x``
the logits ``scale * (W @ x) + b`` and, through a softmax over the whole label set, a
probability per label. ``scale`` is the model's own logit scale (100 for OpenAI's CLIP),
so the probabilities are the ones the model was trained to produce.

* **Zero-shot** (the CLIP paper): ``W`` holds the label embeddings, each the normalised
  mean of its normalised prompt embeddings (templates x names), ``b = 0``. ``W @ x`` is
  then the image's cosine similarity to every label, which is exactly what searching the
  label-embedding index with ``x`` computes. The index is a FAISS ``IndexFlatIP`` cached
  on disk under a key of model, labels and templates, so a label set is embedded once.
* **Few-shot**: a multinomial logistic regression on the frozen image vectors, started
  at and pulled toward the zero-shot weights (``lam * |W - W0|^2``), so that a handful of
  examples refine the words instead of replacing them. The pull is chosen by
  cross-validation, and plain zero-shot is kept unless a probe beats it beyond chance
  (``train_probe``): the CLIP paper found 1-2-shot probes without such care lose to
  zero-shot.

Scoring every label for every image needs every logit (the softmax's denominator), so a
bulk run multiplies a block of image vectors by ``W`` with one BLAS product, the same
product the flat index computes, and ranks the block in numpy (``Head.predict``).
Nothing here imports torch: tagging from stored vectors with a cached head loads no model.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ClassifierError
from .files import write_atomic
from .labels import LabelSet

ZERO_SHOT, FEW_SHOT = "zero-shot", "few-shot"
TEXT_BATCH = 256  # prompts per forward pass of the text tower
# The pulls toward the zero-shot weights that cross-validation chooses from.
REGULARISATION_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# How sure cross-validation must be that a probe beats zero-shot before it is used.
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Predictions:
    """Labels for a block of images, sorted by image then by falling probability."""

    rows: np.ndarray  # index of the image in the block
    labels: np.ndarray  # index into Head.vocabulary
    probability: np.ndarray
    cosine: np.ndarray  # NaN for parents that are only implied


@dataclass(frozen=True)
class Head:
    """A linear classifier over unit image vectors; see the module docstring."""

    name: str  # the label set, or the few-shot classifier's name
    source: str  # ZERO_SHOT or FEW_SHOT
    labels: tuple[str, ...]
    weights: np.ndarray  # (labels, dim) float32
    bias: np.ndarray  # (labels,) float32
    scale: float
    parents: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)  # per-label probability thresholds

    def __post_init__(self) -> None:
        w = np.ascontiguousarray(self.weights, np.float32)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "_scaled_t", np.ascontiguousarray((self.scale * w).T))
        object.__setattr__(self, "_norms", np.linalg.norm(w, axis=1).astype(np.float32))
        # Implied parents get their own slots after the labels.
        vocab = list(self.labels)
        ancestors: list[list[int]] = []
        for label in self.labels:
            chain = []
            name = label
            while (name := self.parents.get(name)) is not None and len(chain) < len(self.parents):
                if name not in vocab:
                    vocab.append(name)
                chain.append(vocab.index(name))
            ancestors.append(chain)
        lens = np.array([len(a) for a in ancestors], np.int64)
        object.__setattr__(self, "vocabulary", tuple(vocab))
        object.__setattr__(self, "_anc_len", lens)
        object.__setattr__(self, "_anc_start", np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64))
        object.__setattr__(self, "_anc_flat", np.array([i for a in ancestors for i in a], np.int64))

    @classmethod
    def stored(cls, name: str, record: str, weights: bytes, bias: bytes, scale: float) -> "Head":
        """A trained few-shot head as the library keeps it: :meth:`record`, and its weights
        and bias as float32 bytes."""
        meta = json.loads(record)
        labels = tuple(meta["labels"])
        return cls(name, FEW_SHOT, labels, np.frombuffer(weights, np.float32).reshape(len(labels), -1),
                   np.frombuffer(bias, np.float32).copy(), scale, meta.get("parents", {}), meta.get("thresholds", {}))

    def record(self, label_set: str) -> str:
        """What :meth:`stored` needs besides the numbers, as JSON; ``label_set`` names where
        the labels came from."""
        return json.dumps({"labels": self.labels, "parents": self.parents, "thresholds": self.thresholds,
                           "label_set": label_set})

    @property
    def dim(self) -> int:
        return self.weights.shape[1]

    def logits(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        z = np.matmul(np.asarray(x, np.float32), self._scaled_t, out=out)
        if self.bias.any():
            z += self.bias
        return z

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        _, total = _shares(z)
        z /= total[:, None]
        return z

    def predict(self, x: np.ndarray, top_k: int | None = None, threshold: float = 0.0,
                min_cosine: float | None = None, implied: bool = False) -> Predictions:
        """The labels of each image in the block ``x``: at most ``top_k`` per image, each at
        or above its probability threshold (the label's own, else ``threshold``) and at or
        above ``min_cosine``; with ``implied``, the parents of every label found too."""
        return self.rank(self.logits(x), top_k, threshold, min_cosine, implied)

    def rank(self, z: np.ndarray, top_k: int | None = None, threshold: float = 0.0,
             min_cosine: float | None = None, implied: bool = False) -> Predictions:
        """:meth:`predict` from the block's logits ``z``, which it overwrites. Blocks of rows
        can be ranked in parallel threads: numpy lets go of the GIL on arrays this big."""
        n, n_labels = len(z), len(self.labels)
        k = n_labels if top_k is None else max(1, min(top_k, n_labels))
        cut = np.full(n_labels, threshold, np.float32)
        for i, label in enumerate(self.labels):
            if label in self.thresholds:
                cut[i] = self.thresholds[label]
        if float(cut.min()) <= 0:
            # No probability floor: take the k best logits before they turn into probabilities.
            c = np.argpartition(-z, k - 1, axis=1)[:, :k] if k < n_labels else np.tile(np.arange(n_labels), (n, 1))
            r = np.repeat(np.arange(n), c.shape[1])
            c = c.reshape(-1)
            top = z[r, c]
            m, total = _shares(z)
            p = np.exp(top - m[r]) / total[r]
        else:
            # A floor p: a label's share exp(z - max) / sum must reach p, so only labels
            # with exp(z - max) >= p * sum survive, at most 1/p of them per image.
            m, total = _shares(z)
            # flatnonzero, then divmod: 2-d nonzero is ten times slower on a block this size.
            flat = np.flatnonzero(z >= (float(cut.min()) * total)[:, None])
            r, c = np.divmod(flat, n_labels)
            share = z.reshape(-1)[flat]
            top = np.log(share) + m[r]
            p = share / total[r]
        cos = (top - self.bias[c]) / (self.scale * self._norms[c])
        keep = p >= cut[c]
        if min_cosine is not None:
            keep &= cos >= min_cosine
        r, c, p, cos = r[keep], c[keep], p[keep], cos[keep]
        order = np.lexsort((-p, r))
        r, c, p, cos = r[order], c[order], p[order], cos[order]
        if len(r):
            first = np.searchsorted(r, r)  # r is sorted: the first candidate of each image
            keep = (np.arange(len(r)) - first) < k
            r, c, p, cos = r[keep], c[keep], p[keep], cos[keep]
        if implied and len(self._anc_flat):
            r, c, p, cos = self._with_parents(r, c, p, cos)
        return Predictions(r, c, p.astype(np.float32), cos.astype(np.float32))

    def _with_parents(self, r, c, p, cos):
        lens = self._anc_len[c]
        total = int(lens.sum())
        if not total:
            return r, c, p, cos
        offsets = np.repeat(np.cumsum(lens) - lens, lens)
        step = np.arange(total) - offsets
        parents = self._anc_flat[np.repeat(self._anc_start[c], lens) + step]
        r = np.concatenate([r, np.repeat(r, lens)])
        c = np.concatenate([c, parents])
        p = np.concatenate([p, np.repeat(p, lens)])
        cos = np.concatenate([cos, np.full(total, np.nan, cos.dtype)])
        # One row per (image, label): a parent found directly or through two children keeps
        # its best probability.
        order = np.lexsort((-p, c, r))
        r, c, p, cos = r[order], c[order], p[order], cos[order]
        first = np.ones(len(r), bool)
        first[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
        r, c, p, cos = r[first], c[first], p[first], cos[first]
        order = np.lexsort((-p, r))
        return r[order], c[order], p[order], cos[order]


def _shares(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn logits into ``exp(z - max)`` in place (no new block-sized arrays: fresh ones
    cost page faults); returns each row's max and sum."""
    m = z.max(axis=1)
    z -= m[:, None]
    # Shares under e^-80 (1e-35) change no sum, and clamping them spares exp its underflow
    # path, which is 8 times slower per element on this CPU.
    np.maximum(z, -80.0, out=z)
    np.exp(z, out=z)
    return m, z.sum(axis=1)


# -- zero-shot: the label-embedding index ---------------------------------------------

def zero_shot_head(label_set: LabelSet, templates: tuple[str, ...], model: str, folder: Path,
                   encode_texts: Callable[[list[str]], np.ndarray], logit_scale: Callable[[], float],
                   progress: Callable[[int, int], None] | None = None) -> Head:
    """The zero-shot head of ``label_set``, from the cached label index when there is one.

    ``encode_texts`` and ``logit_scale`` are only called (and the model only loaded) when
    this model, label set and template list have not been embedded before.
    """
    import faiss

    key = label_set.key(templates, model)
    index_path, meta_path = folder / f"{key}.faiss", folder / f"{key}.json"
    meta = _read_json(meta_path)
    if meta is not None and index_path.is_file():
        index = faiss.read_index(str(index_path))
        weights = index.reconstruct_n(0, index.ntotal)
        scale = float(meta["scale"])
    else:
        texts, owners = label_set.prompts(templates)
        sums: np.ndarray | None = None
        for start in range(0, len(texts), TEXT_BATCH):
            v = encode_texts(texts[start:start + TEXT_BATCH])
            if sums is None:
                sums = np.zeros((len(label_set.labels), v.shape[1]), np.float64)
            np.add.at(sums, owners[start:start + TEXT_BATCH], v)
            if progress:
                progress(min(start + TEXT_BATCH, len(texts)), len(texts))
        # Prompt vectors are unit length, so their sum points where their mean does.
        weights = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
        scale = float(logit_scale())
        index = faiss.IndexFlatIP(weights.shape[1])
        index.add(weights)
        folder.mkdir(parents=True, exist_ok=True)
        # Unique temporary names: two processes embedding one label set at once each
        # write whole files, and the last rename wins.
        write_atomic(index_path, faiss.serialize_index(index).tobytes())
        _write_json(meta_path, {"model": model, "label_set": label_set.name, "labels": label_set.names,
                                "templates": list(templates), "scale": scale})
    thresholds = {lb.name: lb.threshold for lb in label_set.labels if lb.threshold is not None}
    return Head(label_set.name, ZERO_SHOT, tuple(label_set.names), weights, np.zeros(len(weights), np.float32),
                scale, dict(label_set.parents), thresholds)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, ensure_ascii=False).encode("utf-8"))


# -- few-shot: a linear probe pulled toward the zero-shot weights ---------------------

def example_folders(folder: str | os.PathLike,
                    keep: Callable[[Path], bool] | None = None) -> dict[str, list[Path]]:
    """``label -> image files`` of an examples folder: one sub-folder per label (hidden
    ones and empty ones skipped), images found at any depth inside it; with ``keep``, only
    the files it keeps."""
    from .errors import PathNotFoundError
    from .images import is_image_path

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise PathNotFoundError(f"no examples folder at {folder}",
                                hint="make one sub-folder per label, holding a few images each")

    def wanted(p: Path) -> bool:
        return p.is_file() and is_image_path(p) and (keep is None or keep(p))

    classes = {d.name: sorted(filter(wanted, d.rglob("*")))
               for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    classes = {label: files for label, files in classes.items() if files}
    if len(classes) < 2:
        raise ClassifierError(f"{root} needs at least two sub-folders of images, one per label")
    return classes


@dataclass(frozen=True)
class ProbeFit:
    weights: np.ndarray
    bias: np.ndarray
    regularisation: float | None  # None: zero-shot won the cross-validation
    cv_accuracy: float
    zero_shot_accuracy: float
    folds: int


def train_probe(x: np.ndarray, y: np.ndarray, zero_shot: Head, seed: int = 0,
                grid: tuple[float, ...] = REGULARISATION_GRID, significance: float = SIGNIFICANCE) -> ProbeFit:
    """Fit ``zero_shot``'s labels to examples ``x`` (unit vectors) with classes ``y``.

    Each pull in ``grid`` is compared with plain zero-shot by stratified cross-validation
    (at most 5 folds), example by example: a probe is only taken when the held-out
    examples it gets right and zero-shot gets wrong outnumber the reverse beyond chance
    (a one-sided sign test at ``significance``). With a few dozen examples, accuracy moves
    in steps of one image, and a lucky step had picked probes that did worse than
    zero-shot on fresh images; with this test too few examples to tell change nothing.
    Among the probes that pass, the most accurate wins, ties going to the stronger pull;
    it is refitted on all the examples. The accuracy reported is the winner's on the folds.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    if len(x) < 2:
        raise ClassifierError("a few-shot classifier needs at least two examples")
    folds = _folds(y, min(5, len(y)), seed)
    w0, scale = zero_shot.weights, zero_shot.scale
    no_bias = np.zeros(len(w0), np.float32)
    zero_right = _logits(x, w0, no_bias, scale).argmax(1) == y  # zero-shot does not train
    right = {lam: np.zeros(len(y), bool) for lam in grid}
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        for lam in grid:
            w, b = _fit(x[train], y[train], w0, scale, lam)
            right[lam][test] = _logits(x[test], w, b, scale).argmax(1) == y[test]
    passing = [lam for lam in grid
               if _sign_test(int((right[lam] & ~zero_right).sum()), int((~right[lam] & zero_right).sum()))
               <= significance]
    zero_accuracy = float(zero_right.mean())
    if not passing:
        return ProbeFit(w0.copy(), no_bias, None, zero_accuracy, zero_accuracy, int(folds.max()) + 1)
    best = max(passing, key=lambda lam: (int(right[lam].sum()), lam))
    w, b = _fit(x, y, w0, scale, best)
    return ProbeFit(w, b, best, float(right[best].mean()), zero_accuracy, int(folds.max()) + 1)


def _sign_test(wins: int, losses: int) -> float:
    """One-sided p-value of ``wins`` or more among ``wins + losses`` fair coin flips."""
    n = wins + losses
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2 ** n if n else 1.0


def _folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number per example, each class dealt round the folds in a random order."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), np.int64)
    start = 0
    for cls in np.unique(y):
        members = rng.permutation(np.nonzero(y == cls)[0])
        folds[members] = (start + np.arange(len(members))) % k
        start += len(members)
    return folds


def _logits(x: np.ndarray, w: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    return scale * (x @ w.T) + b


def _fit(x: np.ndarray, y: np.ndarray, w0: np.ndarray, scale: float, lam: float,
         iterations: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Minimise mean cross-entropy + ``lam * (|W - W0|^2 + |b|^2)`` by Nesterov's method.

    Convex and smooth: the step is 1/L for the gradient's Lipschitz bound L, the loss's
    curvature in the logits being at most 1/2, and the pull adds 2 * lam.
    """
    n = len(x)
    onehot = np.zeros((n, len(w0)), np.float64)
    onehot[np.arange(n), y] = 1
    x64 = x.astype(np.float64)
    sigma = np.linalg.norm(np.hstack([scale * x64, np.ones((n, 1))]), 2)
    step = 1.0 / (0.5 * sigma ** 2 / n + 2 * lam)
    w = w_prev = w0.astype(np.float64)
    b = b_prev = np.zeros(len(w0))
    for t in range(1, iterations + 1):
        momentum = (t - 1) / (t + 2)
        vw, vb = w + momentum * (w - w_prev), b + momentum * (b - b_prev)
        z = scale * (x64 @ vw.T) + vb
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / n
        w_prev, b_prev = w, b
        w = vw - step * (scale * (g.T @ x64) + 2 * lam * (vw - w0))
        b = vb - step * (g.sum(axis=0) + 2 * lam * vb)
    return w.astype(np.float32), b.astype(np.float32)


def iter_blocks(n: int, block: int) -> Iterator[slice]:
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))
