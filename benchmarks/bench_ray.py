"""Ray's overhead on one node: ``index --engine ray`` against a local ``index``, same run.

    python benchmarks/bench_ray.py [--images 256] [--model ViT-B-32/random] [--size 1024x768]
                                   [--batch-size 64] [--json]

Both index the same photo-like JPEGs into fresh libraries at fp32 on this machine's
CPUs (with ``--gpus-per-worker``: fp16 on its GPU, locally and in the Ray actors). The local run uses one decode process per core and the model in this process;
the Ray run starts a local Ray (timed on its own line), then decodes and embeds on an
actor pool (one actor per 4 CPUs, each with its own decode processes) while this
process scans and commits. The figure to compare on a shared machine is the ratio of
the two rates, measured back to back: how much of a local run's speed one node keeps
when the same work goes through Ray. Random weights: compute does not depend on them,
and no download is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def make_images(folder: Path, count: int, width: int, height: int) -> None:
    import numpy as np

    from clipsearch.demoworld import photo_like

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    distinct = [photo_like(rng, width, height) for _ in range(min(count, 16))]
    for i in range(count):
        # Different files (different content hashes), each decoded in full.
        picture = distinct[i % len(distinct)].rotate(i // len(distinct)) if i >= len(distinct) else distinct[i]
        picture.save(folder / f"p{i:05d}.jpg", quality=90)


class Clock:
    """Progress that notes when batches are committed: the steady rate leaves out the
    start-up (model load, decode workers, actors) before the first batch."""

    def __init__(self):
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] = (0.0, 0)
        self.done = 0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        self.first = self.first or (now, self.done)
        self.last = (now, self.done)

    def steady(self) -> float:
        (t0, n0), (t1, n1) = self.first, self.last
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")

    def scanned(self, count: int) -> None: ...

    def start(self, total: int) -> None: ...

    def skipped(self, path: str, reason: str) -> None: ...

    def rebuilding(self, what: str) -> None: ...


def timed_index(folder: Path, library: Path, model: str, device: str, **kwargs) -> tuple[float, int, float]:
    """Wall seconds, images added, and the steady rate after the first committed batch."""
    from clipsearch import Library

    clock = Clock()
    with Library.open(library, model=model, device=device) as lib:
        started = time.perf_counter()
        report = lib.index([folder], precision="fp16" if device == "cuda" else "fp32", progress=clock, **kwargs)
        return time.perf_counter() - started, report.added, clock.steady()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--model", default="ViT-B-32/random")
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--gpus-per-worker", type=float, default=0,
                    help="> 0: the local run uses CUDA and the Ray run GPU actors")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("CLIPSEARCH_TEXT_ONNX", "0")
    width, height = (int(v) for v in args.size.split("x"))

    import ray

    from clipsearch.cluster import RayOptions

    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        folder = work / "photos"
        make_images(folder, args.images, width, height)
        # Warm the page cache and the model's first load for both runs alike.
        device = "cuda" if args.gpus_per_worker > 0 else "cpu"
        timed_index(folder, work / "warm", args.model, device)
        local_s, local_n, local_steady = timed_index(folder, work / "local", args.model, device, batch_size=args.batch_size)
        started = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - started
        try:
            ray_s, ray_n, ray_steady = timed_index(folder, work / "ray", args.model, device, engine="ray",
                                       ray=RayOptions(batch_size=args.batch_size,
                                                      gpus_per_worker=args.gpus_per_worker))
        finally:
            ray.shutdown()
        assert local_n == ray_n == args.images, (local_n, ray_n)
        row = {
            "images": args.images, "size": args.size, "model": args.model, "cpus": os.cpu_count(),
            "device": device,
            "local_s": round(local_s, 2), "local_img_s": round(local_n / local_s, 2),
            "ray_init_s": round(init_s, 2), "ray_s": round(ray_s, 2), "ray_img_s": round(ray_n / ray_s, 2),
            "local_steady_img_s": round(local_steady, 2), "ray_steady_img_s": round(ray_steady, 2),
            "ray_over_local": round(local_s / ray_s, 3),
            "ray_over_local_steady": round(ray_steady / local_steady, 3),
            "ray_with_init_over_local": round(local_s / (ray_s + init_s), 3),
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{args.images} JPEGs {args.size}, {args.model}, {device}, {row['cpus']} CPUs")
            print(f"local index   {row['local_img_s']:7.2f} img/s  ({local_s:.1f} s)")
            print(f"ray index     {row['ray_img_s']:7.2f} img/s  ({ray_s:.1f} s; ray.init {init_s:.1f} s more)")
            print(f"ray / local   {row['ray_over_local']:.3f}  (with ray.init: {row['ray_with_init_over_local']:.3f})")
            print(f"steady rate after the first batch: local {local_steady:.2f}, ray {ray_steady:.2f} img/s, "
                  f"ray / local {row['ray_over_local_steady']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
