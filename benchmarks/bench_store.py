"""Metadata commit rate: ``Store.commit_batch`` on SQLite and on PostgreSQL.

    python benchmarks/bench_store.py [--images 20000] [--batch 256]
                                     [--db-url postgresql+psycopg://USER@HOST:PORT/postgres]

An index run commits every batch in one transaction: the vectors appended to the vector
file, then the rows written. This times exactly that call, with synthetic rows of the
shape an index run makes (512-d vectors, paths of a photo tree), in two passes:

1. ``new``: N files the library has never seen (inserts, ids numbered in scan order);
2. ``changed``: the same N paths with new content (updates; machine tags are dropped).

With ``--db-url`` it also times ``move``: ``clipsearch move-db``'s copy of the resulting
SQLite library into another fresh PostgreSQL database (``Store.copy_to``).

Each pass runs against a fresh SQLite library and, with ``--db-url``, a fresh PostgreSQL
database that the benchmark creates on that server (the role needs CREATEDB) and drops
afterwards. The baseline, in the same run, is the vector append alone
(``VectorFile.append`` of the same batches): the database's cost is what a commit adds to
it. It prints ms per row and rows/s for each, and PostgreSQL over SQLite.

For scale: a row rate must stay well above the model's image rate, or commits slow the
run (ViT-B-32 fp16 embeds ~18,600 images/s on an H100, 0.054 ms an image).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipsearch.results import ModelIdentity  # noqa: E402
from clipsearch.store import IndexedImage, Store  # noqa: E402
from clipsearch.vectorstore import VectorFile  # noqa: E402

DIM = 512


def batches(count: int, size: int, seed: int, numbered: bool) -> list[list[IndexedImage]]:
    """``count`` rows in batches of ``size``, as an index run of a photo tree makes them."""
    rng = np.random.default_rng(seed)
    out, now = [], time.time_ns()
    for start in range(0, count, size):
        vectors = rng.standard_normal((min(size, count - start), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        out.append([IndexedImage(path=f"/photos/{(start + i) // 500:04d}/IMG_{start + i:07d}.jpg", size=3_000_000,
                                 mtime_ns=now + seed, content_hash=uuid.uuid4().hex, width=4032, height=3024,
                                 vector=vector, taken_ns=now, new_id=start + i + 1 if numbered else None)
                    for i, vector in enumerate(vectors)])
    return out


def time_passes(store: Store, count: int, size: int) -> dict[str, float]:
    """Seconds per row of ``commit_batch``, for new rows and then for changed ones."""
    store.set_model_identity(ModelIdentity("ViT-B-32", None, DIM))
    out = {}
    for name, seed, numbered in (("new", 1, True), ("changed", 2, False)):
        work = batches(count, size, seed, numbered)
        started = time.perf_counter()
        for batch in work:
            store.commit_batch(indexed=batch)
        out[name] = (time.perf_counter() - started) / count
    assert store.counts()["indexed"] == count
    return out


def move_seconds(source: Store, target: Store, count: int) -> float:
    """Seconds per image row of ``clipsearch move-db``'s copy (``Store.copy_to``) of a library."""
    started = time.perf_counter()
    copied = source.copy_to(target)
    assert copied["images"] == count
    return (time.perf_counter() - started) / count


def append_only(folder: Path, count: int, size: int) -> float:
    """Seconds per row of the vector appends alone: the baseline."""
    work = [np.stack([i.vector for i in batch]) for batch in batches(count, size, 1, True)]
    file = VectorFile(folder, 0, DIM)
    started = time.perf_counter()
    for vectors in work:
        file.append(vectors)
    return (time.perf_counter() - started) / count


def postgres_database(server_url: str):
    """A fresh database on the server of ``server_url``: (its URL, a function that drops it)."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"clipsearch_bench_{uuid.uuid4().hex[:8]}"
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url.set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256, help="rows per commit (an index run's batch)")
    parser.add_argument("--db-url", default=None, help="a PostgreSQL server to add a row for; the benchmark "
                                                      "creates and drops a database of its own there")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        tmp = Path(tmp)
        baseline = append_only(tmp, args.images, args.batch)
        sqlite = Store.open(tmp / "sqlite")
        try:
            rows["sqlite"] = time_passes(sqlite, args.images, args.batch)
            if args.db_url:
                for name, timed in (("postgresql", lambda s: time_passes(s, args.images, args.batch)),
                                    ("move", lambda s: {"move": move_seconds(sqlite, s, args.images)})):
                    url, drop = postgres_database(args.db_url)
                    try:
                        store = Store.open(tmp / name, url)
                        try:
                            rows[name] = timed(store)
                        finally:
                            store.close()
                    finally:
                        drop()
        finally:
            sqlite.close()

    result = {"images": args.images, "batch": args.batch, "append_only_ms_per_row": baseline * 1e3}
    for db, passes in rows.items():
        for name, seconds in passes.items():
            result[f"{db}_{name}_ms_per_row"] = seconds * 1e3
            result[f"{db}_{name}_over_append"] = seconds / baseline
    if "postgresql" in rows:
        for name in ("new", "changed"):
            result[f"postgresql_over_sqlite_{name}"] = rows["postgresql"][name] / rows["sqlite"][name]
        result["move_over_sqlite_new"] = rows["move"]["move"] / rows["sqlite"]["new"]
    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
        return
    print(f"{args.images:,} rows in batches of {args.batch}; vector append alone: "
          f"{baseline * 1e3:.4f} ms/row (the baseline)")
    for db, passes in rows.items():
        for name, seconds in passes.items():
            print(f"  {db:<10} {name:<8} {seconds * 1e3:7.4f} ms/row  {1 / seconds:9,.0f} rows/s  "
                  f"{seconds / baseline:6.1f}x the append")
    if "postgresql" in rows:
        print("PostgreSQL / SQLite: " + ", ".join(f"{name} {result[f'postgresql_over_sqlite_{name}']:.2f}x"
                                                   for name in ("new", "changed")))
        print(f"move-db SQLite -> PostgreSQL takes {result['move_over_sqlite_new']:.2f}x the time of committing "
              "the same rows to SQLite")
    else:
        print("(no --db-url: SQLite only)")


if __name__ == "__main__":
    main()
