"""How the image tower computes: the choices of ``--precision``, and what ``auto`` means.

=====  ==============================================================================
fp32   torch, full precision: the reference.
fp16   torch autocast to float16; CUDA only. Cosine to fp32 ~0.9999993 (H100, ViT-B-32).
bf16   torch autocast to bfloat16, CPU or CUDA. On a 2-core Xeon with AVX-512 BF16 it
       ran ViT-B-32 at 10 images/s against fp32's 28: offered, never chosen by ``auto``.
int8   onnxruntime with int8 weights (``imageonnx.py``), CPU: ~1.7x fp32 on that Xeon.
=====  ==============================================================================

``auto`` settles once per library. On CUDA it is fp16, on Apple's MPS fp32, and on a CPU
int8 when the library's int8 tower passed its faithfulness check *and* ran at least 1.2x
torch fp32 on this machine (old CPUs without integer dot-product instructions may not),
else fp32. The first index run records what it used: vectors made at different
precisions must not meet in one index unnoticed, so later runs with ``auto`` keep the
recorded choice and an explicit other one is refused, with one exception: fp16 and
fp32 vectors are the same to six decimals, so a library made on a GPU can be updated on
a laptop's CPU (the record then lists both).

Nothing here imports torch: the choice is made from names, the device and the int8
tower's measured meta.
"""

from __future__ import annotations

import os

from .errors import ArgumentError, InputError, PrecisionMismatchError

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
ENV_PRECISION = "CLIPSEARCH_PRECISION"  # the default for ``--precision``
_INTERCHANGEABLE = frozenset({"fp32", "fp16"})
# How much faster int8 must have run for ``auto`` to take it: the check times one batch
# on a machine that may be busy, and a near tie (the demo model measured 2,052 against
# 2,097 images/s one time and the reverse another) is not worth approximate vectors.
INT8_MIN_SPEEDUP = 1.2


def requested(value: str | None) -> str:
    """``value``, else ``$CLIPSEARCH_PRECISION``, else ``auto``; checked."""
    value = (value or os.environ.get(ENV_PRECISION) or "auto").strip().lower()
    if value not in PRECISIONS:
        raise ArgumentError(f"unknown precision {value!r}", hint=f"choose one of: {', '.join(PRECISIONS)}")
    return value


def parse_record(text: str | None) -> list[str]:
    """The precisions a library's vectors were made at, in the order first used."""
    return [p for p in (text or "").split(",") if p]


def runnable(precision: str, device: str) -> bool:
    if precision == "fp16":
        return device == "cuda"
    if precision == "bf16":
        return device in ("cpu", "cuda")
    return True


def for_library(want: str, recorded: list[str], device: str) -> str:
    """The precision an index run on ``device`` uses, given what the library recorded.
    ``auto`` is returned as is for a library with no vectors yet: the encoder settles it."""
    if want != "auto" and not runnable(want, device):
        raise InputError(f"[[precision={want}]] cannot run on {device}",
                         hint="fp16 needs a CUDA GPU; use [[precision=auto]]")
    if not recorded:
        return want
    if want == "auto":
        if runnable(recorded[0], device):
            return recorded[0]
        substitute = next((p for p in sorted(_INTERCHANGEABLE) if runnable(p, device) and compatible(p, recorded)),
                          None)
        if substitute is None:
            raise PrecisionMismatchError(
                f"this library's vectors were made at {', '.join(recorded)}, which cannot run on {device}",
                hint="index on the machine that made them, or into a new library ([[library]])")
        return substitute
    if not compatible(want, recorded):
        raise PrecisionMismatchError(
            f"this library's vectors were made at {', '.join(recorded)}, not {want}; "
            "mixing them would make search scores inconsistent",
            hint="leave out [[precision]] to keep the library's own, or index into a new library ([[library]])")
    return want


def unchecked(want: str, recorded: list[str], device: str) -> str:
    """:func:`for_library` with ``auto`` settled without an int8 tower to time: what a
    cluster's workers use (``cluster.py``), which cannot each make and time one."""
    chosen = for_library(want, recorded, device)
    return auto_choice(device, None) if chosen == "auto" else chosen


def compatible(precision: str, recorded: list[str]) -> bool:
    return all(precision == r or {precision, r} <= _INTERCHANGEABLE for r in recorded)


def record(recorded: list[str], used: str) -> str:
    return ",".join(recorded if used in recorded else [*recorded, used])


def auto_choice(device: str, int8_meta: dict | None) -> str:
    """What ``auto`` means on ``device`` for a fresh library; ``int8_meta`` is the checked
    int8 tower's meta (``imageonnx.export``), or None when there is none."""
    if device == "cuda":
        return "fp16"
    if device == "cpu" and int8_meta and \
            int8_meta["int8_images_per_s"] >= INT8_MIN_SPEEDUP * int8_meta["fp32_images_per_s"]:
        return "int8"
    return "fp32"


def fidelity(reference, candidate, k: int = 10) -> tuple[float, float, float]:
    """How faithful ``candidate`` vectors are to ``reference`` ones for the same images:
    (mean cosine, lowest cosine, top-``k`` overlap). The overlap takes every image as a
    query against all the others, exactly, in both sets, and averages the share of the
    reference's ``k`` nearest that the candidate's ``k`` nearest also hold."""
    import numpy as np

    ref, got = np.asarray(reference, np.float32), np.asarray(candidate, np.float32)
    cosines = (ref * got).sum(1)
    k = min(k, len(ref) - 1)
    overlaps = []
    for vectors in (ref, got):
        scores = vectors @ vectors.T
        np.fill_diagonal(scores, -np.inf)
        overlaps.append(np.argpartition(-scores, k - 1, axis=1)[:, :k])
    shared = [len(np.intersect1d(a, b)) for a, b in zip(*overlaps)]
    return float(cosines.mean()), float(cosines.min()), float(np.mean(shared) / k)
