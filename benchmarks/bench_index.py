"""Indexing throughput, per precision, against torch fp32's model-only speed in one run.

    python benchmarks/bench_index.py [--images 128] [--model ViT-B-32/random] [--device auto]
                                     [--precisions fp32,bf16,int8] [--explore] [--json]

Random weights by default: compute does not depend on the weight values, and no download
is needed (random weights are drawn from a fixed seed, so the int8 tower made from them
computes the same function as the torch model). For every precision it measures:

1. model only: ``Encoder.encode_crops`` on ready uint8 batches, no files at all;
2. fidelity to fp32 on 256 synthetic pictures: mean and lowest cosine per image, and the
   overlap of each picture's top-10 neighbours with fp32's (``precision.fidelity``);
3. ``Library.index`` end to end on 12-megapixel JPEGs (4000x3000), and on the same
   pictures pre-shrunk to 224 px. The int8 tower is made once, before the timed runs, and
   given to each library: its one-off export is reported on its own line.

It also measures one decode of a 12 MP JPEG on one core, and from it the most any
pipeline can do on this CPU: ``cores / (decode + cores / model-only)`` images/s, since
decoding and the model share the same cores.

The ratios are what to compare on a shared machine: end to end over fp32 model only
(issue 7's target for the fastest faithful precision: >= 1.5 on a 2-core CPU), 12 MP over
224 px (the decode cost), and each model-only speed over fp32's.

``--explore`` adds model-only rows for what lost: torch channels-last, torch.compile,
torch's own dynamic int8, onnxruntime fp32, and torch on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Only light imports up here: spawned decode workers import this script again, and each
# would otherwise load FAISS and SQLAlchemy for nothing (2-3 s of CPU each, seen on a
# 16-core GPU machine). The facade is imported where it is used.
from clipsearch import imageonnx, precision  # noqa: E402
from clipsearch.demoworld import photo_like  # noqa: E402
from clipsearch.encoder import Encoder  # noqa: E402


def make_corpus(folder: Path, count: int) -> tuple[Path, Path]:
    big, small = folder / "12mp", folder / "224px"
    big.mkdir(parents=True)
    small.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        im = photo_like(rng, 4000, 3000)
        im.save(big / f"photo_{i:04d}.jpg", quality=92)
        im.resize((299, 224), Image.Resampling.LANCZOS).save(small / f"photo_{i:04d}.jpg", quality=92)
    return big, small


def model_only(encode, size: int, count: int, batch: int) -> float:
    crops = np.random.default_rng(1).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    encode(crops)  # warm-up
    done, started = 0, time.perf_counter()
    while done < count:
        encode(crops)
        done += batch
    return done / (time.perf_counter() - started)


def decode_seconds(folder: Path, size: int, count: int = 8) -> float:
    """One core's time to read, decode and crop one file, as a decode worker does."""
    from clipsearch.images import decode_image
    from clipsearch.pixels import PixelSpec, model_pixels

    spec = PixelSpec(size, (0.5,) * 3, (0.5,) * 3)
    files = sorted(folder.iterdir())[:count]
    started = time.perf_counter()
    for f in files:
        model_pixels(decode_image(f.read_bytes(), size).image, spec)
    return (time.perf_counter() - started) / len(files)


def end_to_end(folder: Path, model: str, device: str, batch: int, workers: int | None, want: str,
               towers: Path) -> tuple[float, float]:
    from clipsearch import Library

    with tempfile.TemporaryDirectory() as lib_dir:
        if (towers / imageonnx.FOLDER).exists():
            shutil.copytree(towers / imageonnx.FOLDER, Path(lib_dir) / imageonnx.FOLDER)
        with Library.open(lib_dir, model=model, device=device) as lib:
            lib.encoder.use_precision(want, [])
            lib.encoder.load()  # loading the model is not indexing
            started = time.perf_counter()
            report = lib.index([folder], batch_size=batch, workers=workers, precision=want)
            seconds = time.perf_counter() - started
    assert report.added == len(list(folder.iterdir())) and not report.errors, report
    assert report.precision == want, report.precision
    return report.added / seconds, seconds


def explore(model: str, device: str, size: int, count: int, batch: int, towers: Path) -> dict[str, float]:
    """Model-only speeds of the candidates that lost (see the module docstring)."""
    import torch

    enc = Encoder(model, device, precision="fp32").load()
    tower = imageonnx._image_tower(enc._model.visual, enc.pixel_spec)
    rows = {}

    def run(name, module):
        with torch.inference_mode():
            rows[name] = model_only(lambda c: module(torch.from_numpy(c)), size, count, batch)
        print(f"  {name:28} {rows[name]:7.2f} img/s", file=sys.stderr)

    run("torch fp32 (same graph)", tower)
    run("torch fp32 channels-last", tower.to(memory_format=torch.channels_last))
    run("torch int8 quantize_dynamic",
        torch.ao.quantization.quantize_dynamic(imageonnx._image_tower(enc._model.visual, enc.pixel_spec),
                                               {torch.nn.Linear}, dtype=torch.qint8))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run("torch fp32, 1 thread", tower)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    compiled = torch.compile(tower)
    run("torch.compile fp32", compiled)
    print(f"  (torch.compile took {time.perf_counter() - started:.0f}s including its runs)", file=sys.stderr)
    from clipsearch import onnxtower

    path = towers / "fp32-explore.onnx"
    onnxtower.export(tower, (torch.zeros((2, size, size, 3), dtype=torch.uint8),), path, "pixels",
                     {0: torch.export.Dim("batch", min=1, max=4096)})
    session = onnxtower.session(path, cold=False)
    rows["onnxruntime fp32"] = model_only(lambda c: session.run(None, {"pixels": c}), size, count, batch)
    print(f"  {'onnxruntime fp32':28} {rows['onnxruntime fp32']:7.2f} img/s", file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--model", default="ViT-B-32/random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", default=None, help="comma-separated; default fp32,bf16,int8 on CPU, "
                                                       "fp32,fp16 on CUDA")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--explore", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    os.environ[precision.ENV_PRECISION] = "fp32"  # nothing here may settle "auto" behind our back

    towers = Path(tempfile.mkdtemp(prefix="bench-towers-"))
    try:
        fp32 = Encoder(args.model, args.device, precision="fp32").load()
        device, size = fp32.device, fp32.pixel_spec.size
        wanted = (args.precisions or ("fp32,fp16" if device == "cuda" else "fp32,bf16,int8")).split(",")
        batch = args.batch_size or fp32.batch_size()
        test_set = imageonnx.check_crops(fp32.pixel_spec, 256, seed=1)
        reference = np.concatenate([fp32.encode_crops(test_set[i:i + batch]) for i in range(0, 256, batch)])
        rows: dict[str, dict] = {}
        for want in wanted:
            started = time.perf_counter()
            enc = fp32 if want == "fp32" else Encoder(args.model, args.device, precision=want, workdir=towers)
            enc.load()
            made = time.perf_counter() - started
            got = np.concatenate([enc.encode_crops(test_set[i:i + batch]) for i in range(0, 256, batch)])
            mean, low, overlap = precision.fidelity(reference, got)
            rows[want] = {"model_only_img_s": model_only(enc.encode_crops, size, args.images, batch),
                          "mean_cosine": round(mean, 5), "min_cosine": round(low, 5), "top10_overlap": round(overlap, 3)}
            if want == "int8":
                rows[want]["tower_made_s"] = round(made, 1)
            print(f"{want}: model only {rows[want]['model_only_img_s']:.2f} img/s, cosine mean {mean:.5f} "
                  f"min {low:.5f}, top-10 overlap {overlap:.3f}", file=sys.stderr)
            if enc is not fp32:
                del enc
        explored = explore(args.model, args.device, size, args.images, batch, towers) if args.explore else {}

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            big, small = make_corpus(Path(tmp), args.images)
            mb = sum(p.stat().st_size for p in big.iterdir()) / len(list(big.iterdir())) / 1e6
            print(f"corpus: {args.images} JPEGs of 4000x3000 (mean {mb:.1f} MB) drawn in "
                  f"{time.perf_counter() - t0:.0f}s", file=sys.stderr)
            decode_s = decode_seconds(big, size)
            for want in wanted:
                for name, folder in (("12mp", big), ("224px", small)):
                    rate, _ = end_to_end(folder, args.model, args.device, batch, args.workers, want, towers)
                    rows[want][f"index_{name}_img_s"] = rate
                print(f"{want}: index 12 MP {rows[want]['index_12mp_img_s']:.2f} img/s, "
                      f"224 px {rows[want]['index_224px_img_s']:.2f}", file=sys.stderr)
        # The machine is shared: take fp32's model-only figure as the better of a run
        # before and after the end-to-end runs.
        base = max(rows["fp32"]["model_only_img_s"] if "fp32" in rows else 0.0,
                   model_only(fp32.encode_crops, size, args.images, batch))
    finally:
        shutil.rmtree(towers, ignore_errors=True)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for row in rows.values():
        row["ceiling_12mp_img_s"] = cores / (decode_s + cores / row["model_only_img_s"])
        row["ratio_model_vs_fp32_model"] = row["model_only_img_s"] / base
        row["ratio_12mp_vs_fp32_model"] = row["index_12mp_img_s"] / base
        row["ratio_12mp_vs_224px"] = row["index_12mp_img_s"] / row["index_224px_img_s"]
        for key, value in row.items():
            if key.startswith("ratio") or key.endswith("_img_s"):
                row[key] = round(value, 3 if key.startswith("ratio") else 2)
    result = {"model": args.model, "device": device, "cores": cores, "batch_size": batch, "images": args.images,
              "fp32_model_only_img_s": round(base, 2), "decode_12mp_ms": round(decode_s * 1000, 1),
              "precisions": rows, "explored_model_only_img_s": {k: round(v, 2) for k, v in explored.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.model} on {device} ({cores} cores), batch {batch}; fp32 model only {base:.2f} img/s; "
          f"one 12 MP decode {decode_s * 1000:.0f} ms on one core")
    print(f"{'':6} {'model':>8} {'x fp32':>7} {'cos mean':>9} {'cos min':>8} {'top10':>6} "
          f"{'12MP':>7} {'x fp32':>7} {'224px':>7} {'12/224':>7} {'ceiling':>8}")
    for want, r in rows.items():
        print(f"{want:6} {r['model_only_img_s']:8.2f} {r['ratio_model_vs_fp32_model']:7.3f} {r['mean_cosine']:9.5f} "
              f"{r['min_cosine']:8.5f} {r['top10_overlap']:6.3f} {r['index_12mp_img_s']:7.2f} "
              f"{r['ratio_12mp_vs_fp32_model']:7.3f} {r['index_224px_img_s']:7.2f} {r['ratio_12mp_vs_224px']:7.3f} "
              f"{r['ceiling_12mp_img_s']:8.2f}")
    if "int8" in rows and "tower_made_s" in rows["int8"]:
        print(f"the int8 tower took {rows['int8']['tower_made_s']:.0f}s to make and check (once per library)")
    for name, rate in explored.items():
        print(f"explored: {name:28} {rate:7.2f} img/s  x fp32 {rate / base:.3f}")
    print("targets: faithful = cosine mean >= 0.995 and top-10 overlap >= 0.9; the fastest faithful "
          "precision's 12 MP / fp32 model >= 1.5")


if __name__ == "__main__":
    main()
