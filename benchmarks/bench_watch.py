"""How soon `clipsearch watch` makes a new file searchable, and what an idle watcher costs.

    python benchmarks/bench_watch.py [--images 1000] [--files 20] [--debounce 1.0] [--idle 30]

It draws a library of N demo pictures, indexes it with the demo model, and starts a
real ``clipsearch watch`` process on the folder. Then, one at a time, it writes F new
pictures into the folder and times each from the moment its write ends to the moment a
fresh reader finds it in the library (``Library.image_id``, polled every 20 ms).

The baseline, in the same run: the same kind of file brought in by ``Library.update``
in this process on a copy of the library, with the model loaded: what any watcher must
spend on a batch, plus its debounce. The ratio latency / (debounce + update) is what
waiting for events and handing over between processes add.

Idle: the watcher's CPU time (user + system, from /proc) over ``--idle`` seconds with
nothing changing, as a share of one core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipsearch import Library, demoworld  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def searchable_after(library: Path, path: Path, timeout: float = 120) -> float:
    """Seconds until a fresh reader finds ``path`` in the library."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with Library.open(library, create=False) as lib:
            if lib.image_id(path) is not None:
                return time.perf_counter() - started
        time.sleep(0.02)
    raise TimeoutError(f"{path} was not indexed within {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--debounce", type=float, default=1.0)
    ap.add_argument("--idle", type=float, default=30.0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_watch."))
    try:
        photos, spare, library = work / "photos", work / "spare", work / "lib"
        demoworld.write_images(photos, args.images, seed=1, size_range=(96, 256), fmt="jpg")
        demoworld.write_images(spare, args.files * 2, seed=2, size_range=(96, 256), fmt="jpg")
        spares = sorted(spare.iterdir())
        with Library.open(library, model="demo") as lib:
            lib.index([photos])

        # The baseline: Library.update of one new file, the model loaded, on a copy.
        shutil.copytree(library, work / "baseline")
        shutil.copytree(photos, work / "baseline-photos")
        with Library.open(work / "baseline") as lib:
            lib.store.add_roots([work / "baseline-photos"])
            lib.encoder.load()
            updates = []
            for n in range(args.files):
                target = work / "baseline-photos" / f"new_{n}.jpg"
                shutil.copy(spares[args.files + n], target)
                started = time.perf_counter()
                lib.update([target])
                updates.append(time.perf_counter() - started)

        proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "watch", str(photos), "-L", str(library),
                                 "--debounce", str(args.debounce)], stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()
            if not line.startswith("watching "):
                raise SystemExit(f"the watcher did not start: {line}")
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            latencies = []
            for n in range(args.files):
                target = photos / f"new_{n}.jpg"
                tmp = photos / f".new_{n}.part"  # written whole, then renamed, as a copy tool does
                shutil.copy(spares[n], tmp)
                os.rename(tmp, target)
                latencies.append(searchable_after(library, target))
            time.sleep(2)  # the last batch's aftermath (index save) done
            before, started = cpu_seconds(proc.pid), time.perf_counter()
            time.sleep(args.idle)
            idle_share = (cpu_seconds(proc.pid) - before) / (time.perf_counter() - started)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        update = statistics.median(updates)
        print(f"library: {args.images} demo pictures; {args.files} new files, one at a time; "
              f"debounce {args.debounce} s")
        print(f"baseline: Library.update of one file, model loaded: median {update * 1000:.0f} ms")
        print(f"write -> searchable through watch: p50 {p50:.2f} s, p99 {p99:.2f} s, "
              f"max {latencies[-1]:.2f} s")
        print(f"ratio p50 / (debounce + update): {p50 / (args.debounce + update):.2f}")
        print(f"idle watcher: {100 * idle_share:.2f}% of one core over {args.idle:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
