"""Indexing throughput, per precision, against torch fp32's model-only speed in one run.

    python benchmarks/bench_index.py [--images 128] [--model ViT-B-32/random] [--device auto]
                                     [--precisions fp32,bf16,int8] [--corpus DIR] [--explore] [--json]

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
decoding and the model share the same cores; on CUDA, where they do not,
``min(workers / decode, model-only)``.

The batch is each precision's own choice (``Encoder.batch_size()``: 32 on a CPU, sized
from free GPU memory on CUDA) unless ``--batch-size`` is given; the end-to-end runs let
the library's own encoder choose it, as ``clipsearch index`` does. Each end-to-end run
also reports where its time went: the share of the wall time spent in the model
(``encode_crops``, host-to-GPU copies included) and in database commits, and the decode
workers' busy share, ``images x one-core decode time / (workers x wall)`` (near 1: the
run is decode-bound), when the first batch reached the model, and how long the run went
on after its last commit. The start of a decode pool (spawning its workers) is timed on
its own.

The corpus: ``--distinct`` pictures (default 16) are drawn with ``photo_like`` (about 3 s
each at 12 MP), the other files are shifted copies of them, each a distinct file that is
decoded in full; files are written by one process per core. ``--corpus DIR`` keeps it
in DIR and reuses it in later runs (e.g. of another model).

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


def _draw(big: Path, small: Path, base: int, files: list[int]) -> None:
    """Draw picture ``base`` and write ``files`` from it: the first as drawn, the others
    shifted by a different number of rows and columns each, so that every file is distinct."""
    picture = np.asarray(photo_like(np.random.default_rng(base), 4000, 3000))
    for n, i in enumerate(files):
        im = Image.fromarray(np.roll(picture, (n * 97, n * 131), axis=(0, 1)) if n else picture)
        im.save(big / f"photo_{i:05d}.jpg", quality=92)
        im.resize((299, 224), Image.Resampling.LANCZOS).save(small / f"photo_{i:05d}.jpg", quality=92)


def make_corpus(folder: Path, count: int, distinct: int = 16) -> tuple[Path, Path]:
    """``count`` 12 MP JPEGs in folder/12mp and their 224 px copies in folder/224px; an
    existing corpus of that size is reused."""
    big, small = folder / "12mp", folder / "224px"
    if big.is_dir() and small.is_dir() and len(list(big.iterdir())) == count == len(list(small.iterdir())):
        return big, small
    shutil.rmtree(big, ignore_errors=True)
    shutil.rmtree(small, ignore_errors=True)
    big.mkdir(parents=True)
    small.mkdir(parents=True)
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    bases = max(1, min(distinct, count))
    with ProcessPoolExecutor(min(bases, os.cpu_count() or 1), mp_context=get_context("spawn")) as pool:
        for done in [pool.submit(_draw, big, small, b, list(range(b, count, bases))) for b in range(bases)]:
            done.result()
    return big, small


def model_only(encode, size: int, count: int, batch: int, min_seconds: float = 0.0) -> float:
    """Images/s of ``encode`` on ready batches: at least ``count`` images and ``min_seconds``."""
    crops = np.random.default_rng(1).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    encode(crops)  # warm-up
    done, started = 0, time.perf_counter()
    while done < count or time.perf_counter() - started < min_seconds:
        encode(crops)  # returns numpy: on CUDA the GPU has finished
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


def _timed(method, calls: list[tuple[float, float]]):
    """``method``, noting the (start, end) of every call in ``calls``."""
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            calls.append((started, time.perf_counter()))
    return wrapper


def pool_start_seconds(folder: Path, spec, workers: int) -> float:
    """Wall time of a decode pool of ``workers`` processes over as many small files: about
    its start (spawning the workers and their imports), which every index run pays."""
    from clipsearch.decodepool import DecodePool

    files = sorted(folder.iterdir())[:workers]
    started = time.perf_counter()
    done = list(DecodePool(workers, lambda: spec, lambda h: False).run([(i, str(f)) for i, f in enumerate(files)]))
    assert len(done) == len(files) and not any(d.error for d in done), done
    return time.perf_counter() - started


def end_to_end(folder: Path, model: str, device: str, batch: int | None, workers: int | None, want: str,
               towers: Path) -> dict:
    """``Library.index`` of ``folder``: images/s, the batch and workers it used, and the
    shares of the wall time spent in the model and in database commits, when the first
    batch reached the model and how long the run went on after its last commit (saving
    the index)."""
    from clipsearch import Library
    from clipsearch.decodepool import default_workers

    with tempfile.TemporaryDirectory() as lib_dir:
        if (towers / imageonnx.FOLDER).exists():
            shutil.copytree(towers / imageonnx.FOLDER, Path(lib_dir) / imageonnx.FOLDER)
        with Library.open(lib_dir, model=model, device=device) as lib:
            lib.encoder.use_precision(want, [])
            lib.encoder.load()  # loading the model is not indexing
            chosen = batch or lib.encoder.batch_size()  # nor is the CUDA batch probe (cached)
            model_calls: list[tuple[float, float]] = []
            commit_calls: list[tuple[float, float]] = []
            lib.encoder.encode_crops = _timed(lib.encoder.encode_crops, model_calls)
            lib.store.commit_batch = _timed(lib.store.commit_batch, commit_calls)
            started = time.perf_counter()
            report = lib.index([folder], batch_size=batch, workers=workers, precision=want)
            seconds = time.perf_counter() - started
    assert report.added == len(list(folder.iterdir())) and not report.errors, report
    assert report.precision == want, report.precision
    return {"img_s": report.added / seconds, "seconds": seconds, "batch_size": chosen,
            "workers": workers or default_workers(),
            "model_share": sum(b - a for a, b in model_calls) / seconds,
            "commit_share": sum(b - a for a, b in commit_calls) / seconds,
            "first_batch_s": model_calls[0][0] - started,
            "after_last_commit_s": started + seconds - commit_calls[-1][1]}


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
    ap.add_argument("--distinct", type=int, default=16, help="pictures drawn for the corpus; the other files "
                                                             "are shifted copies of them")
    ap.add_argument("--corpus", type=Path, default=None, help="keep the corpus in this folder and reuse it")
    ap.add_argument("--explore", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import logging

    logging.basicConfig(format="%(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("clipsearch.encoder").setLevel(logging.INFO)  # the CUDA batch size and why
    os.environ[precision.ENV_PRECISION] = "fp32"  # nothing here may settle "auto" behind our back

    towers = Path(tempfile.mkdtemp(prefix="bench-towers-"))
    try:
        fp32 = Encoder(args.model, args.device, precision="fp32").load()
        device, size = fp32.device, fp32.pixel_spec.size
        wanted = (args.precisions or ("fp32,fp16" if device == "cuda" else "fp32,bf16,int8")).split(",")
        batch = args.batch_size or fp32.batch_size()
        min_seconds = 2.0 if device == "cuda" else 0.0  # a GPU batch takes milliseconds
        test_set = imageonnx.check_crops(fp32.pixel_spec, 256, seed=1)
        reference = np.concatenate([fp32.encode_crops(test_set[i:i + batch]) for i in range(0, 256, batch)])
        rows: dict[str, dict] = {}
        for want in wanted:
            started = time.perf_counter()
            enc = fp32 if want == "fp32" else Encoder(args.model, args.device, precision=want, workdir=towers)
            enc.load()
            made = time.perf_counter() - started
            own = args.batch_size or enc.batch_size()
            got = np.concatenate([enc.encode_crops(test_set[i:i + own]) for i in range(0, 256, own)])
            mean, low, overlap = precision.fidelity(reference, got)
            rows[want] = {"model_only_img_s": model_only(enc.encode_crops, size, args.images, own, min_seconds),
                          "batch_size": own,
                          "mean_cosine": round(mean, 5), "min_cosine": round(low, 5), "top10_overlap": round(overlap, 3)}
            if want == "int8":
                rows[want]["tower_made_s"] = round(made, 1)
            print(f"{want}: model only {rows[want]['model_only_img_s']:.2f} img/s (batch {own}), cosine mean {mean:.5f} "
                  f"min {low:.5f}, top-10 overlap {overlap:.3f}", file=sys.stderr)
            if enc is not fp32:
                del enc
        explored = explore(args.model, args.device, size, args.images, batch, towers) if args.explore else {}

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            big, small = make_corpus(args.corpus or Path(tmp), args.images, args.distinct)
            mb = sum(p.stat().st_size for p in big.iterdir()) / len(list(big.iterdir())) / 1e6
            print(f"corpus: {args.images} JPEGs of 4000x3000 (mean {mb:.1f} MB), {args.distinct} drawn, "
                  f"ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            decode_s = {"12mp": decode_seconds(big, size), "224px": decode_seconds(small, size, 32)}
            print(f"one-core decode: 12 MP {decode_s['12mp'] * 1000:.1f} ms, 224 px "
                  f"{decode_s['224px'] * 1000:.2f} ms", file=sys.stderr)
            from clipsearch.decodepool import default_workers

            pool_start = pool_start_seconds(small, fp32.pixel_spec, args.workers or default_workers())
            print(f"decode pool start ({args.workers or default_workers()} workers): {pool_start:.2f}s",
                  file=sys.stderr)
            for want in wanted:
                for name, folder in (("12mp", big), ("224px", small)):
                    run = end_to_end(folder, args.model, args.device, args.batch_size, args.workers, want, towers)
                    rows[want][f"index_{name}_img_s"] = run["img_s"]
                    rows[want][f"index_{name}_batch_size"] = run["batch_size"]
                    rows[want][f"index_{name}_workers"] = run["workers"]
                    rows[want][f"index_{name}_model_share"] = round(run["model_share"], 3)
                    rows[want][f"index_{name}_commit_share"] = round(run["commit_share"], 3)
                    rows[want][f"index_{name}_decode_busy_share"] = round(
                        args.images * decode_s[name] / (run["workers"] * run["seconds"]), 3)
                    rows[want][f"index_{name}_first_batch_s"] = round(run["first_batch_s"], 2)
                    rows[want][f"index_{name}_after_last_commit_s"] = round(run["after_last_commit_s"], 2)
                    print(f"{want}: index {name} {run['img_s']:.2f} img/s in {run['seconds']:.1f}s, batch "
                          f"{run['batch_size']}, {run['workers']} workers busy "
                          f"{rows[want][f'index_{name}_decode_busy_share']:.0%} (estimated); model "
                          f"{run['model_share']:.0%} and commits {run['commit_share']:.0%} of the wall time; "
                          f"first batch at {run['first_batch_s']:.2f}s, {run['after_last_commit_s']:.2f}s "
                          "after the last commit", file=sys.stderr)
        # The machine is shared: take fp32's model-only figure as the better of a run
        # before and after the end-to-end runs.
        base = max(rows["fp32"]["model_only_img_s"] if "fp32" in rows else 0.0,
                   model_only(fp32.encode_crops, size, args.images, batch, min_seconds))
    finally:
        shutil.rmtree(towers, ignore_errors=True)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for row in rows.values():
        if device == "cuda":  # decoding and the model do not share the cores
            row["ceiling_12mp_img_s"] = min(row["index_12mp_workers"] / decode_s["12mp"], row["model_only_img_s"])
        else:
            row["ceiling_12mp_img_s"] = cores / (decode_s["12mp"] + cores / row["model_only_img_s"])
        row["ratio_model_vs_fp32_model"] = row["model_only_img_s"] / base
        row["ratio_12mp_vs_fp32_model"] = row["index_12mp_img_s"] / base
        row["ratio_12mp_vs_224px"] = row["index_12mp_img_s"] / row["index_224px_img_s"]
        for key, value in row.items():
            if key.startswith("ratio") or key.endswith("_img_s"):
                row[key] = round(value, 3 if key.startswith("ratio") else 2)
    result = {"model": args.model, "device": device, "cores": cores, "batch_size": batch, "images": args.images,
              "fp32_model_only_img_s": round(base, 2), "decode_12mp_ms": round(decode_s["12mp"] * 1000, 1),
              "decode_224px_ms": round(decode_s["224px"] * 1000, 2), "decode_pool_start_s": round(pool_start, 2),
              "precisions": rows, "explored_model_only_img_s": {k: round(v, 2) for k, v in explored.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.model} on {device} ({cores} cores), batch {batch}; fp32 model only {base:.2f} img/s; "
          f"one 12 MP decode {decode_s['12mp'] * 1000:.0f} ms on one core")
    print(f"{'':6} {'model':>8} {'x fp32':>7} {'cos mean':>9} {'cos min':>8} {'top10':>6} "
          f"{'12MP':>7} {'x fp32':>7} {'224px':>7} {'12/224':>7} {'ceiling':>8}")
    for want, r in rows.items():
        print(f"{want:6} {r['model_only_img_s']:8.2f} {r['ratio_model_vs_fp32_model']:7.3f} {r['mean_cosine']:9.5f} "
              f"{r['min_cosine']:8.5f} {r['top10_overlap']:6.3f} {r['index_12mp_img_s']:7.2f} "
              f"{r['ratio_12mp_vs_fp32_model']:7.3f} {r['index_224px_img_s']:7.2f} {r['ratio_12mp_vs_224px']:7.3f} "
              f"{r['ceiling_12mp_img_s']:8.2f}")
    for want, r in rows.items():
        print(f"{want:6} index batch {r['index_12mp_batch_size']}, {r['index_12mp_workers']} decode workers; "
              "share of the wall time, 12 MP / 224 px: decoders busy "
              f"{r['index_12mp_decode_busy_share']:.0%} / {r['index_224px_decode_busy_share']:.0%}, model "
              f"{r['index_12mp_model_share']:.0%} / {r['index_224px_model_share']:.0%}, commits "
              f"{r['index_12mp_commit_share']:.0%} / {r['index_224px_commit_share']:.0%}")
    if "int8" in rows and "tower_made_s" in rows["int8"]:
        print(f"the int8 tower took {rows['int8']['tower_made_s']:.0f}s to make and check (once per library)")
    for name, rate in explored.items():
        print(f"explored: {name:28} {rate:7.2f} img/s  x fp32 {rate / base:.3f}")
    print("targets: faithful = cosine mean >= 0.995 and top-10 overlap >= 0.9; the fastest faithful "
          "precision's 12 MP / fp32 model >= 1.5")


if __name__ == "__main__":
    main()
