"""Cold text queries: the whole-process wall time of ``clipsearch search "..." --json``.

    python benchmarks/bench_cold.py [--images 100k] [--runs 7]

It writes a library of N synthetic 512-d vectors (``bench_search.Mixture``) recorded as
made by ``ViT-B-32/laion2b_s34b_b79k``, builds and saves its index, and saves the text
tower as ONNX the way an index run does, exported from ViT-B-32 with random weights
(no weights can be downloaded here; the compute does not depend on their values). Then,
each in a fresh process, interleaved, ``--runs`` times:

* ``clipsearch search TEXT --json --no-service`` with a text never seen before (so it is
  encoded): the cold path;
* the same search answered by a running ``clipsearch serve`` of the library (its query
  service, ``service.py``), the text new each time too;
* ``python -c "import torch"``: the baseline, what the torch path pays before any work;
* ``clipsearch --help``.

It prints the medians and the ratios to import torch. Targets on the 2-core CPU
machine: cold search <= 0.45 of import torch, with the service <= 0.3 s, --help <= 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import Mixture, metadata_db, parse_count, write_vectors  # noqa: E402
from clipsearch.results import ModelIdentity  # noqa: E402

MODEL = ("ViT-B-32", "laion2b_s34b_b79k")


def wall(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{cmd} failed: {done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="100k")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    n = parse_count(args.images)
    work = Path(tempfile.mkdtemp(prefix="bench_cold_"))
    try:
        write_vectors(work, n, Mixture(512, clusters=max(16, n // 1000)))
        store = metadata_db(work, n)
        store.set_model_identity(ModelIdentity(*MODEL, 512))
        store.close()
        import open_clip
        import torch

        from clipsearch import Library, textonnx

        torch.manual_seed(0)
        model = open_clip.create_model(MODEL[0]).eval()
        meta = textonnx.export(model, open_clip.get_tokenizer(MODEL[0]), work, "/".join(MODEL))
        with Library.open(work) as lib:
            lib.optimize()  # the index, built and saved as an index run leaves it
        print(f"set up: {n:,} vectors, text tower exported in {meta['export_seconds']}s", file=sys.stderr)

        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        cli = [sys.executable, "-m", "clipsearch.cli"]
        times: dict[str, list[float]] = {"search": [], "search (service)": [], "import torch": [], "--help": []}
        server = subprocess.Popen(cli + ["serve", "--port", "0", "-L", str(work)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            if not server.stdout.readline().startswith("clipsearch serving "):
                raise RuntimeError("serve did not start")
            search = cli + ["search", "--json", "-L", str(work)]
            wall(search + ["a warm-up"], env)  # the service's first query loads its text tower
            for run in range(args.runs):
                times["search"].append(wall(search + [f"a photo of thing {run} on a table", "--no-service"], env))
                times["search (service)"].append(wall(search + [f"a drawing of thing {run} on a chair"], env))
                times["import torch"].append(wall([sys.executable, "-c", "import torch"], env))
                times["--help"].append(wall(cli + ["--help"], env))
        finally:
            server.terminate()
            server.wait(timeout=60)
        medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
        print(json.dumps({
            "images": n, "runs": args.runs, "median_s": medians,
            "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "search_over_import_torch": round(medians["search"] / medians["import torch"], 2),
            "service_search_over_import_torch": round(medians["search (service)"] / medians["import torch"], 2),
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
