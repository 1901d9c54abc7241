"""Measuring a classifier on labelled images: the numbers behind ``clipsearch eval``.

The CLIP paper's loop is: write class names, try a prompt template, count the errors on
a few dozen labelled images, rephrase, and add a few-shot probe when words are not
enough. Everything here works on unit image vectors ``x`` with true classes ``y``
(indexes into the head's labels) and is plain numpy; ``Library.evaluate`` gathers the
vectors and the heads.

The few-shot curve draws K training images per label (``draws`` times, each with its
own seed), trains with :func:`classifier.train_probe` (the code ``classifier train``
runs, sign test included), and scores the probe and zero-shot on the same held-out
images: the rest of the folder. The CLIP paper found zero-shot worth about 4 shots.
"""

from __future__ import annotations

import numpy as np

from .classifier import Head, train_probe
from .errors import ClassifierError
from .results import ClassScore, Confusion, Evaluation, Miss, ShotScore, TemplateScore

TOP_CONFUSED = 10
DRAWS = 3


def evaluate(head: Head, x: np.ndarray, y: np.ndarray, paths: list[str]) -> Evaluation:
    """Accuracy, per-label precision and recall, the confusion matrix, the most confused
    pairs and every miss, of ``head`` on images ``x`` whose true labels are ``y``."""
    labels = list(head.labels)
    n = len(labels)
    probabilities = head.probabilities(x)
    predicted = probabilities.argmax(1)
    top1, top5 = _top_accuracy(probabilities, y)  # the softmax keeps the logits' order
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (y, predicted), 1)
    classes = []
    for c, label in enumerate(labels):
        taken = int(confusion[:, c].sum())
        support = int(confusion[c].sum())
        classes.append(ClassScore(label, round(confusion[c, c] / taken, 4) if taken else None,
                                  round(confusion[c, c] / support, 4) if support else 0.0, support))
    off = [(int(confusion[t, p]), t, p) for t in range(n) for p in range(n) if t != p and confusion[t, p]]
    most = [Confusion(labels[t], labels[p], count) for count, t, p in sorted(off, key=lambda e: (-e[0], e[1], e[2]))]
    misses = [Miss(paths[i], labels[y[i]], labels[predicted[i]], round(float(probabilities[i, predicted[i]]), 4))
              for i in np.nonzero(predicted != y)[0]]
    misses.sort(key=lambda m: -m.probability)  # the most confident mistakes first
    return Evaluation(head.name, head.source, labels, len(y), top1, top5, classes, confusion.tolist(),
                      most[:TOP_CONFUSED], misses)


def accuracy(head: Head, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of ``head`` (with five labels or fewer, top-5 is 1)."""
    return _top_accuracy(head.logits(x), y)


def _top_accuracy(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 accuracy from per-label scores ``z``, highest best."""
    k = min(5, z.shape[1])
    top = np.argpartition(-z, k - 1, axis=1)[:, :k]
    top1 = float((z.argmax(1) == y).mean())
    top5 = float((top == y[:, None]).any(1).mean())
    return round(top1, 4), round(top5, 4)


def template_scores(heads: list[tuple[str, Head]], x: np.ndarray, y: np.ndarray) -> list[TemplateScore]:
    """Each ``(template, head)``'s accuracy, best first."""
    scores = [TemplateScore(name, *accuracy(head, x, y)) for name, head in heads]
    return sorted(scores, key=lambda s: (-s.top1, -s.top5))


def shot_counts(most: int) -> list[int]:
    """1, 2, 4, ... up to ``most``, which is always included."""
    counts = [1]
    while counts[-1] * 2 < most:
        counts.append(counts[-1] * 2)
    return sorted(set(counts + [most]))


def few_shot_curve(head: Head, x: np.ndarray, y: np.ndarray, most: int, draws: int = DRAWS,
                   seed: int = 0) -> list[ShotScore]:
    """K-shot probes for K in :func:`shot_counts` against zero-shot, on held-out images."""
    counts = np.bincount(y, minlength=len(head.labels))
    present = counts[counts > 0]
    if most < 1:
        raise ClassifierError(f"[[few_shot]] needs at least 1 shot, not {most}")
    if present.min() <= most:
        raise ClassifierError(
            f"[[few_shot={most}]] leaves no held-out image for a label with only {int(present.min())} examples",
            hint=f"use [[few_shot={max(1, int(present.min()) - 1)}]] or add examples")
    curve = []
    for shots in shot_counts(most):
        zero, few, tested = [], [], 0
        for draw in range(draws):
            rng = np.random.default_rng(seed + draw)
            train = np.zeros(len(y), bool)
            for c in np.nonzero(counts)[0]:
                train[rng.choice(np.nonzero(y == c)[0], shots, replace=False)] = True
            fit = train_probe(x[train], y[train], head, seed=seed + draw)
            probe = Head(head.name, head.source, head.labels, fit.weights, fit.bias, head.scale)
            test = ~train
            zero.append(accuracy(head, x[test], y[test])[0])
            few.append(accuracy(probe, x[test], y[test])[0])
            tested = int(test.sum())
        curve.append(ShotScore(shots, draws, round(float(np.mean(zero)), 4), round(float(np.mean(few)), 4), tested))
    return curve


def shots_to_beat(curve: list[ShotScore]) -> int | None:
    return next((s.shots for s in curve if s.few_shot > s.zero_shot), None)
