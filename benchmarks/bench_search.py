"""Search at scale: the index ``optimize`` picks, against exact search, on synthetic vectors.

    python benchmarks/bench_search.py [--sizes 100k,1M,10M] [--dim 512] [--queries 200]
                                      [--memory-budget 2GB] [--target-recall 0.9,0.95] [--workdir DIR]

For each size it writes that many clustered unit vectors (a mixture of random centres,
like CLIP embeddings, where neighbours are close and clusters far apart) to a float16
vector file, memory-mapped like a library's, and then measures:

- build: the index type ``choose_index`` picks for the budget, trained, filled and tuned
  with ``VectorIndex.tune`` for the recall target (what ``clipsearch optimize`` runs);
- index memory: the size of the FAISS index (serialised size, which is its footprint);
- recall@10 against exact search over the same vectors, on queries drawn from the same
  mixture but not in the index;
- p50/p99 latency of single queries: the search alone, then with the text encoder
  in front (ViT-B-32 with random weights on this machine's CPU; compute does not depend
  on weight values);
- the metadata lookup of k = 100 hits in a SQLite library of the same size;
- the baseline: exact search latency on the same machine in the same run, and the ratio.

Ratios are comparable across runs on a shared machine; absolute figures less so. The 10M
run needs ~10 GB of disk for the vector file and finishes within 24 GB of memory.
``--intrinsic-dim 0`` gives the harder, isotropic clusters (see ``Mixture``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipsearch.index import (  # noqa: E402
    FLAT_MAX, VectorIndex, choose_index, exact_search, parse_size, recall_at,
)
from clipsearch.store import Store  # noqa: E402
from clipsearch.results import ModelIdentity  # noqa: E402
from clipsearch.vectorstore import VectorFile  # noqa: E402


def parse_count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


class Mixture:
    """Clustered unit vectors: a random centre plus noise, with the cosine of a point to its
    centre ~0.8 and to its cluster-mates ~0.65.

    With ``intrinsic_dim`` (the default, 16) most of the noise lies in a low-dimensional
    subspace of each cluster, as with real CLIP embeddings, whose neighbourhoods have an
    intrinsic dimension of tens, not hundreds. ``intrinsic_dim=0`` makes it isotropic:
    the top 10 among a cluster's points are then nearly equidistant from a query, a much
    harder case for any approximate index than real photos.
    """

    def __init__(self, dim: int, clusters: int, intrinsic_dim: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.intrinsic_dim = dim, intrinsic_dim
        self.centres = _unit(rng.standard_normal((clusters, dim), dtype=np.float32))
        # A pool of random orthonormal bases, one per cluster (shared past 256 clusters).
        self.bases = np.stack([np.linalg.qr(rng.standard_normal((dim, intrinsic_dim)))[0]
                               for _ in range(min(256, clusters))]).astype(np.float32) if intrinsic_dim else None

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        which = rng.integers(0, len(self.centres), n)
        x = self.centres[which].copy()
        if self.bases is None:
            x += rng.standard_normal((n, self.dim), dtype=np.float32) * (0.75 / np.sqrt(self.dim))
        else:
            z = rng.standard_normal((n, self.intrinsic_dim), dtype=np.float32) * (0.7 / np.sqrt(self.intrinsic_dim))
            basis = which % len(self.bases)
            for b in np.unique(basis):  # one matrix product per basis, not a basis per point
                mine = np.flatnonzero(basis == b)
                x[mine] += z[mine] @ self.bases[b].T
            x += rng.standard_normal((n, self.dim), dtype=np.float32) * (0.25 / np.sqrt(self.dim))
        return _unit(x)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_vectors(folder: Path, n: int, mixture: Mixture) -> VectorFile:
    vf = VectorFile(folder, 1, mixture.dim)
    rng = np.random.default_rng(1)
    for start in range(0, n, 262_144):
        vf.append(mixture.sample(min(262_144, n - start), rng))
    return vf


def metadata_db(folder: Path, n: int) -> Store:
    """A library database with ``n`` indexed rows, written directly for speed."""
    store = Store(folder)
    store.set_model_identity(ModelIdentity("bench", None, 512))
    con = sqlite3.connect(folder / "library.db")
    rows = ((i + 1, f"/photos/{i // 1000:05}/IMG_{i:08}.jpg", 3_000_000, 1_700_000_000_000_000_000 + i,
             f"{i:032x}", 4000, 3000, "indexed", "2026-11-22 00:00:00", i) for i in range(n))
    con.executemany("insert into images (id, path, size, mtime_ns, content_hash, width, height, status, "
                    "indexed_at, row) values (?,?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    return store


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(fn, items) -> list[float]:
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t)
    return out


def bench(n: int, args, encoder) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench_search_{n}_", dir=args.workdir))
    try:
        mixture = Mixture(args.dim, clusters=max(100, min(20_000, n // 500)), intrinsic_dim=args.intrinsic_dim)
        t = time.perf_counter()
        vf = write_vectors(work, n, mixture)
        gen_s = time.perf_counter() - t
        queries = mixture.sample(args.queries, np.random.default_rng(2))
        live = np.ones(n, bool)
        rows = np.arange(n, dtype=np.int64)

        t = time.perf_counter()
        _, truth = exact_search(vf, live, queries, 10)
        exact_batch_s = time.perf_counter() - t
        # Baseline: exact single-query search. In memory (FAISS Flat) where it fits,
        # else streamed from the vector file: batched time per query, a lower bound.
        if n <= 2_000_000:
            import faiss

            flat = faiss.IndexFlatIP(args.dim)
            for _, block in vf.chunks():
                flat.add(block)
            exact_ms = percentiles(timed(lambda q: flat.search(q[None], 10), queries[:50]))[0]
            exact_how = "FAISS Flat, single queries"
            del flat
        else:
            exact_ms = exact_batch_s / len(queries) * 1000
            exact_how = f"streamed from the vector file, {len(queries)} queries batched"

        plan = choose_index(n, args.dim, args.memory_budget)
        t = time.perf_counter()
        vi = VectorIndex.build(plan, vf, rows + 1, rows, args.memory_budget)
        build_s = time.perf_counter() - t
        vi.save(work / "index.1.faiss")
        index_bytes = (work / "index.1.faiss").stat().st_size

        texts = [f"a photo of a {w} on the beach" for w in range(args.queries)]
        runs = []
        for target in args.target_recall:  # one build, tuned for each target in turn
            t = time.perf_counter()
            tuned = vi.tune(target)
            tune_s = time.perf_counter() - t
            vi.search(queries[:5], 10)  # warm up
            _, got = vi.search(queries, 10)
            runs.append({
                "target": target, "param": vi.facts.search_param, "tune_s": tune_s, "tune_recall": tuned,
                "recall": recall_at(truth + 1, got), "search": percentiles(timed(lambda q: vi.search(q, 10), queries)),
                "with_text": percentiles(timed(lambda s: vi.search(encoder.encode_texts([s])[0], 10), texts[:50])),
            })

        on_disk = measure_on_disk(work, vf, rows, queries, truth, args) if args.on_disk else None

        store = metadata_db(work, n)
        hit_ids = [vi.search(q, 100)[1][0].tolist() for q in queries[:50]]
        meta = timed(store.hits, hit_ids)  # what Library.search does with the hits
        store.close()
        return {
            "n": n, "index": plan.factory, "gen_s": gen_s, "build_s": build_s, "index_gb": index_bytes / 1024 ** 3,
            "vector_file_gb": vf.nbytes / 1024 ** 3, "runs": runs, "meta": percentiles(meta),
            "exact_ms": exact_ms, "exact_how": exact_how, "on_disk": on_disk,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Run in a fresh process per index, so that its resident memory is the index's alone:
# load it as a library would, answer every query, and report resident memory split into
# anonymous (RssAnon: what the process must hold) and file-backed pages (RssFile: mapped
# lists and vector-file pages, which the kernel can drop and page back in).
_SERVE = """
import json, sys, time
import numpy as np
from clipsearch.index import VectorIndex, recall_at
from clipsearch.vectorstore import VectorFile

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

work, dim, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
queries, truth = np.load(work + "/queries.npy"), np.load(work + "/truth.npy")
before = rss("RssAnon"), rss("RssFile")
rows = np.arange(n, dtype=np.int64)
vi = VectorIndex.load(path, VectorFile(work, 1, dim), rows + 1, rows)
loaded = rss("RssAnon")
times = []
for q in queries:
    t = time.perf_counter()
    vi.search(q, 10)
    times.append(time.perf_counter() - t)
got = vi.search(queries, 10)[1]
print(json.dumps({"anon_loaded_mb": loaded - before[0], "anon_serving_mb": rss("RssAnon") - before[0],
                  "file_serving_mb": rss("RssFile") - before[1], "peak_mb": rss("VmHWM"),
                  "p50_ms": float(np.median(times) * 1000), "recall": recall_at(truth + 1, got)}))
"""


def measure_on_disk(work: Path, vf: VectorFile, rows: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                    args) -> dict:
    """The on-disk row: an IVF index built from shards into memory-mapped lists, against
    the in-memory IVF of the same plan, each served by a fresh process."""
    import json
    import subprocess

    from clipsearch.index import ivf_plan

    n = len(rows)
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", truth)
    plan = ivf_plan(n, args.dim, args.memory_budget, on_disk=True)
    t = time.perf_counter()
    in_memory = VectorIndex.build(plan, vf, rows + 1, rows, args.memory_budget)
    memory_build_s = time.perf_counter() - t
    t = time.perf_counter()
    on_disk = VectorIndex.build_on_disk(plan, vf, rows + 1, rows, work / "ondisk.1", args.memory_budget)
    disk_build_s = time.perf_counter() - t
    target = args.target_recall[-1]
    on_disk.tune(target)
    in_memory.tune(target)
    in_memory.save(work / "memory.faiss")
    on_disk.save(work / "ondisk.faiss")
    del in_memory, on_disk
    out = {"index": plan.factory, "memory_build_s": memory_build_s, "disk_build_s": disk_build_s,
           "lists_gb": (work / "ondisk.1.ivfdata").stat().st_size / 1024 ** 3}
    for name in ("memory", "ondisk"):
        run = subprocess.run([sys.executable, "-c", _SERVE, str(work), str(args.dim), str(n),
                              str(work / f"{name}.faiss")], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        if run.returncode:
            raise RuntimeError(run.stderr[-2000:])
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100k,1M,10M")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--memory-budget", default="2GB")
    parser.add_argument("--target-recall", default="0.95", help="one or more, comma-separated: 0.9,0.95")
    parser.add_argument("--workdir", default=None, help="where the vector files go (default: the temp dir)")
    parser.add_argument("--text-model", default="ViT-B-32/random")
    parser.add_argument("--on-disk", action="store_true",
                        help="add the on-disk row: IVF lists memory-mapped, against the same IVF in memory, "
                             "with the resident memory of a process serving each")
    parser.add_argument("--intrinsic-dim", type=int, default=16,
                        help="dimension of each cluster's spread; 0: isotropic, a harder case (see Mixture)")
    args = parser.parse_args()
    args.memory_budget = parse_size(args.memory_budget)
    args.target_recall = [float(t) for t in args.target_recall.split(",")]

    from clipsearch.encoder import Encoder

    encoder = Encoder(args.text_model, "cpu").load()
    print(f"{os.cpu_count()} CPU cores; budget {args.memory_budget / 1024 ** 3:.1f} GB; target recall "
          f"{', '.join(map(str, args.target_recall))}; {args.queries} queries; exact search below {FLAT_MAX:,}; "
          f"intrinsic dimension {args.intrinsic_dim or 'full (isotropic)'}", flush=True)
    for size in args.sizes.split(","):
        r = bench(parse_count(size), args, encoder)
        print(f"\n== {r['n']:,} vectors x {args.dim}: {r['index']}", flush=True)
        print(f"  write vectors   {r['gen_s']:8.1f} s   (vector file {r['vector_file_gb']:.2f} GB, float16)")
        print(f"  build + train   {r['build_s']:8.1f} s")
        print(f"  index memory    {r['index_gb']:8.3f} GB")
        for run in r["runs"]:
            print(f"  -- tuned for recall {run['target']}: {run['param'] or 'exact'} in {run['tune_s']:.1f} s "
                  f"({run['tune_recall']:.3f} on tuning queries)")
            print(f"  recall@10       {run['recall']:8.3f}    vs exact search, {args.queries} held-out queries")
            print(f"  search p50/p99  {run['search'][0]:8.2f} / {run['search'][1]:.2f} ms")
            print(f"  + text encoder  {run['with_text'][0]:8.2f} / {run['with_text'][1]:.2f} ms")
            print(f"  speed-up        {r['exact_ms'] / run['search'][0]:8.1f} x   exact p50 / index p50")
        print(f"  metadata k=100  {r['meta'][0]:8.2f} / {r['meta'][1]:.2f} ms")
        print(f"  exact search    {r['exact_ms']:8.2f} ms   ({r['exact_how']})", flush=True)
        if r["on_disk"]:
            d = r["on_disk"]
            print(f"  -- on disk: {d['index']}, lists {d['lists_gb']:.3f} GB; built in {d['disk_build_s']:.1f} s "
                  f"(in memory: {d['memory_build_s']:.1f} s); a fresh process serving {args.queries} queries:")
            for name, label in (("memory", "in memory"), ("ondisk", "on disk")):
                m = d[name]
                print(f"  {label:10} anonymous memory {m['anon_loaded_mb']:7.1f} MB loaded, "
                      f"{m['anon_serving_mb']:7.1f} MB serving; file pages {m['file_serving_mb']:7.1f} MB; "
                      f"p50 {m['p50_ms']:.2f} ms; recall@10 {m['recall']:.3f}")
            ratio = d["ondisk"]["anon_loaded_mb"] / max(1e-9, d["memory"]["anon_loaded_mb"])
            print(f"  anonymous memory of the loaded index, on disk / in memory {ratio:.3f}; "
                  f"latency {d['ondisk']['p50_ms'] / d['memory']['p50_ms']:.2f} x", flush=True)


if __name__ == "__main__":
    main()
