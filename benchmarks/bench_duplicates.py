"""``clipsearch duplicates`` at scale: time against the bare k-NN pass, and group quality.

    python benchmarks/bench_duplicates.py [--sizes 400,100k] [--seed 0] [--workdir DIR]
                                          [--index-sample 2000]

For each size it builds (once; kept under ``--workdir`` for later runs) a folder of about
N demo pictures with known duplicates (``demoworld.write_duplicate_set``: distinct
pictures in look-alike families that share a colour and shape, a place and size, all but
the colour, or a background; a fifth of them with one to three copies, JPEG re-encodes,
resizes or 2-10% crops) and indexes it with the demo model. Then, in one run:

1. baseline: the bare k-NN pass over the library's own index, each image's 16 nearest,
   nothing else (best of two);
2. ``Library.duplicates`` with ``crops`` off and on, each as a first run with the pixel
   signatures that ``index`` kept, a repeat run, and a first run with none kept (a
   library indexed before index kept them: every file in a doubtful pair is decoded),
   with the time of each stage (from the ``progress`` callback) and the ratio to the
   baseline;
3. the quality of the groups against the known duplicates: pair precision and recall,
   false groups (holding two distinct pictures), and recall by kind of duplicate;
4. what keeping signatures costs ``index``: the first ``--index-sample`` pictures
   indexed into fresh libraries with and without them, alternately, best of two each;
   and their disk space per image.

Time is on this machine, shared; the ratios are the figures to compare across runs.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import parse_count  # noqa: E402
import clipsearch.library  # noqa: E402
from clipsearch import Library, demoworld  # noqa: E402
from clipsearch.duplicates import SIGNATURES  # noqa: E402

SIZE_RANGE = (80, 200)  # long sides in pixels: small pictures, so 100k index in about half an hour
NEIGHBOURS = 16


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def build_set(workdir: Path, n: int, seed: int) -> Path:
    """A library of about ``n`` demo pictures with known duplicates, made once under ``workdir``."""
    root = workdir / f"dups-{n}-{seed}"
    if (root / "truth.json").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    originals = round(n / 1.25)
    written = demoworld.write_duplicate_set(root / "photos", originals, originals // 8, seed, SIZE_RANGE)
    with Library.open(root / "lib", model="demo") as lib:
        lib.index([root / "photos"])
    (root / "truth.json").write_text(json.dumps([[str(w.path), w.picture, w.kind] for w in written]))
    return root


def knn_pass(lib: Library) -> float:
    """Seconds for the bare k-NN pass ``duplicates`` starts with."""
    index = lib.vectors
    ids, rows, _ = lib.store.live()
    t = time.perf_counter()
    for start in range(0, len(ids), 1024):
        index.search(index.file.rows(rows[start:start + 1024]), min(NEIGHBOURS + 1, len(ids)))
    return time.perf_counter() - t


def timed_run(lib: Library, crops: bool) -> tuple[float, dict[str, float], list]:
    stages: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        stages.setdefault(stage, [now, now])[1] = now

    t = time.perf_counter()
    groups = lib.duplicates(neighbours=NEIGHBOURS, crops=crops, progress=progress)
    return time.perf_counter() - t, {k: v[1] - v[0] for k, v in stages.items()}, groups


def quality(groups, truth: dict[str, tuple[int, str]]) -> dict:
    """Pair precision and recall of ``groups`` against the known pictures."""
    picture = {p: t[0] for p, t in truth.items()}
    grouped = {h.path: n for n, g in enumerate(groups) for h in g.images}
    found_pairs = sum(len(g.images) * (len(g.images) - 1) // 2 for g in groups)
    right_pairs = sum(sum(c * (c - 1) // 2 for c in Counter(picture[h.path] for h in g.images).values())
                      for g in groups)
    members = defaultdict(list)
    for path, (pic, _) in truth.items():
        members[pic].append(path)
    true_pairs = sum(len(m) * (len(m) - 1) // 2 for m in members.values())
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path, (pic, kind) in truth.items():
        if kind == "original":
            continue
        original = next(p for p in members[pic] if truth[p][1] == "original")
        key = re.sub(r" \d+%", "", kind)  # "crop 6%+re-encode" -> "crop+re-encode"
        by_kind[key][1] += 1
        by_kind[key][0] += path in grouped and grouped.get(original) == grouped[path]
    false_groups = sum(len({picture[h.path] for h in g.images}) > 1 for g in groups)
    return {"groups": len(groups), "false_groups": false_groups,
            "precision": right_pairs / found_pairs if found_pairs else 1.0,
            "recall": right_pairs / true_pairs if true_pairs else 1.0,
            "by_kind": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_kind.items())}}


def signature_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.sig"))


def index_cost(root: Path, truth: dict, sample: int) -> dict:
    """Seconds to index the first ``sample`` pictures into a fresh library with signatures
    kept and without, alternately, best of two each."""
    folder = root / "sample"
    if not folder.is_dir():
        folder.mkdir()
        for n, path in enumerate(sorted(truth)[:sample]):
            (folder / f"{n:06d}{Path(path).suffix}").symlink_to(path)
    best: dict[str, float] = {}
    original = clipsearch.library.SignatureStore
    for _ in range(2):
        for kept in (True, False):
            shutil.rmtree(root / "sample-lib", ignore_errors=True)
            # Without: the indexer is handed no signature store, as before index kept them.
            clipsearch.library.SignatureStore = original if kept else (lambda folder: None)
            try:
                with Library.open(root / "sample-lib", model="demo") as lib:
                    report = lib.index([folder], follow_symlinks=True)
            finally:
                clipsearch.library.SignatureStore = original
            key = "with" if kept else "without"
            best[key] = min(best.get(key, float("inf")), report.seconds)
            if kept:
                best["bytes_per_image"] = signature_bytes(root / "sample-lib" / SIGNATURES) / report.added
    shutil.rmtree(root / "sample-lib", ignore_errors=True)
    return best


def bench(n: int, args) -> dict:
    started = time.perf_counter()
    root = build_set(Path(args.workdir), n, args.seed)
    built = time.perf_counter() - started
    truth = {p: (pic, kind) for p, pic, kind in json.loads((root / "truth.json").read_text())}
    out = {"n": len(truth), "built_s": built, "runs": {}}
    signatures, from_index = root / "lib" / SIGNATURES, root / "signatures-from-index"
    if not from_index.is_dir():  # as index left them, for every "first run" to start from
        shutil.copytree(signatures, from_index)
    out["signatures_mb"] = signature_bytes(from_index) / 1e6
    with Library.open(root / "lib") as lib:
        lib.vectors  # load the index before timing anything
        knn = [knn_pass(lib)]
        for crops in (False, True):
            name = f"crops={'on' if crops else 'off'}"
            for run in ("first", "repeat", "none kept"):
                shutil.rmtree(signatures, ignore_errors=True)
                if run == "first":
                    shutil.copytree(from_index, signatures)
                if run == "repeat":  # after the first: the signatures it merged
                    shutil.copytree(root / "after-first", signatures)
                seconds, stages, groups = timed_run(lib, crops)
                out["runs"][f"{name}, {run}"] = (seconds, stages)
                if run == "first":
                    shutil.rmtree(root / "after-first", ignore_errors=True)
                    shutil.copytree(signatures, root / "after-first")
                    out[f"quality {name}"] = quality(groups, truth)
                elif quality(groups, truth) != out[f"quality {name}"]:
                    out[f"quality {name}, {run}"] = quality(groups, truth)
        knn.append(knn_pass(lib))
    shutil.rmtree(signatures, ignore_errors=True)
    shutil.copytree(from_index, signatures)
    out["knn_s"] = min(knn)
    out["index"] = index_cost(root, truth, min(args.index_sample, len(truth)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="400,100k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/bench_duplicates")
    parser.add_argument("--index-sample", type=int, default=2000)
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    for n in (parse_count(s) for s in args.sizes.split(",")):
        r = bench(n, args)
        print(f"\n== {r['n']:,} images (set built in {r['built_s']:.0f} s, kept in {args.workdir})")
        print(f"baseline, bare k-NN pass ({NEIGHBOURS} nearest): {r['knn_s']:.3f} s")
        for name, (seconds, stages) in r["runs"].items():
            detail = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            print(f"duplicates {name:20} {seconds:7.2f} s  {seconds / r['knn_s']:7.1f}x k-NN  ({detail})")
        for key in (k for k in r if k.startswith("quality")):
            q = r[key]
            print(f"{key}: {q['groups']} groups, {q['false_groups']} false; pair precision {q['precision']:.4f}, "
                  f"recall {q['recall']:.4f}; found by kind: {q['by_kind']}")
        cost = r["index"]
        print(f"index with signatures kept: {cost['with']:.1f} s, without {cost['without']:.1f} s "
              f"({min(args.index_sample, r['n'])} pictures): {cost['with'] / cost['without']:.3f}x; "
              f"{cost['bytes_per_image'] / 1e3:.2f} kB per image on disk ({r['signatures_mb']:.0f} MB here); "
              f"peak memory {rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
