"""What a long-running ``clipsearch serve`` keeps: its resident memory over rounds of the
requests a fuzzer sends (issue 16's classes, and ordinary use).

    python benchmarks/bench_web_memory.py [--rounds 8] [--texts 400] [--model demo] [--workers 4]

It indexes 48 demo-world images with the model, starts a real ``clipsearch serve`` on
loopback, warms it (index, model, one query of each kind), and then sends ``--rounds``
rounds, each of:

* ``--texts`` text searches never seen before, of random words up to the length limit,
  half by ``GET``, half by JSON, some with ``and``/``not`` terms and filters;
* every thumbnail at a random size and format, every original file;
* clip-retrieval queries (text, embedding, uploaded image) and a 10,000-id ``/metadata``;
* uploads to ``/api/search`` and ``/api/classify``, a label matrix, a duplicates job;
* the requests issue 16 found 500s with: ids past 64 bits, JSON nested 5,000 deep, dates
  past 64-bit nanoseconds (which must find nothing), non-string and 10,000-item lists,
  lone surrogates, a NUL byte, a 19 MB text (each of which must get a 4xx).

It prints the server's RSS (``/proc/PID/status``) after the warm-up (the baseline) and
after each round, with the ratio to the baseline and the growth per round, and the
average growth per round over the second half of the rounds: a bounded server's falls to
noise (allocator high-water marks), a leak's stays what it was.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipsearch import Library, demoworld  # noqa: E402
from clipsearch.web.schemas import MAX_TEXT  # noqa: E402

WORDS = "red green blue yellow circle square star cross ring triangle photo of a the on big small".split()


def request(base: str, path: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, data=body, headers={"Content-Type": content_type} if content_type else {})
    try:
        with urllib.request.urlopen(req, timeout=600) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_json(base: str, path: str, body) -> tuple[int, bytes]:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return request(base, path, raw.encode() if isinstance(raw, str) else raw, "application/json")


def multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    boundary = "benchboundary7"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def random_text(rng: random.Random) -> str:
    # Made-up words as well as known ones: each new word is new work (and a new entry in
    # any tokenizer cache) for the server.
    words = []
    while sum(len(w) + 1 for w in words) < rng.randint(5, MAX_TEXT - 40):
        words.append(rng.choice(WORDS) if rng.random() < 0.5 else
                     "".join(rng.choice("abcdefghijklmnopqrstuvwxyzéøß") for _ in range(rng.randint(2, 30))))
    return " ".join(words)[:MAX_TEXT]


def hostile(base: str, photos: Path) -> list[int]:
    """Issue 16's requests, but for the dates; their statuses."""
    big, deep = 2**63, "[" * 5000 + "]" * 5000
    statuses = [request(base, f"/api/images/{big}{suffix}")[0] for suffix in ("", "/file", "/thumbnail")]
    statuses += [request(base, f"/api/similar/{big}")[0],
                 request(base, "/api/search?" + urllib.parse.urlencode({"and": f"id:{big}"}))[0],
                 post_json(base, "/metadata", {"ids": [big]})[0]]
    statuses += [post_json(base, path, '{"text": %s, "ids": %s}' % (deep, deep))[0]
                 for path in ("/api/search", "/knn-service", "/metadata")]
    statuses += [post_json(base, "/api/search", {"text": "x", k: [1]})[0] for k in ("ext", "in", "tag", "no_tag")]
    statuses += [post_json(base, "/api/search", {"text": "x", "tag": ["t"] * 10_000})[0],
                 post_json(base, "/api/search", '{"text": "\\ud800"}')[0],
                 post_json(base, "/api/matrix", '{"images": [1], "labels": "demo-colours", "templates": ["\\ud800"]}')[0],
                 post_json(base, "/api/eval", {"folder": f"{photos}\x00", "labels": "demo-colours"})[0],
                 post_json(base, "/api/search", {"text": "a dog " * 3_200_000})[0]]
    return statuses


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def one_round(base: str, photos: Path, ids: list[int], rng: random.Random, texts: int, workers: int) -> None:
    sample = sorted(photos.glob("*.jpg"))[0].read_bytes()
    jobs = []
    for n in range(texts):
        text = random_text(rng)
        if n % 2:
            params = {"q": text, "n": rng.choice([10, 30, 100])}
            if n % 3 == 0:
                params.update({"and": f"2:{rng.choice(WORDS)}", "not": rng.choice(WORDS), "tag": "red"})
            jobs.append(lambda p=params: request(base, "/api/search?" + urllib.parse.urlencode(p, doseq=True)))
        else:
            jobs.append(lambda t=text: post_json(base, "/api/search", {"text": t, "images": ids[:2], "n": 30}))
    for i in ids:
        size, fmt = rng.randint(16, 1024), rng.choice(["webp", "jpeg"])
        jobs.append(lambda i=i, s=size, f=fmt: request(base, f"/api/images/{i}/thumbnail?size={s}&format={f}"))
        jobs.append(lambda i=i: request(base, f"/api/images/{i}/file"))
    jobs += [
        lambda: post_json(base, "/knn-service", {"text": random_text(rng), "num_images": 40, "deduplicate": True}),
        lambda: post_json(base, "/knn-service", {"image": base64.b64encode(sample).decode(), "num_images": 10}),
        lambda: post_json(base, "/knn-service", {"embedding_input": [rng.random() for _ in range(64)]}),
        lambda: post_json(base, "/metadata", {"ids": list(range(10_000))}),
        lambda: request(base, "/api/search", *multipart({"q": "a star", "n": "20"}, sample)),
        lambda: request(base, "/api/classify", *multipart({"labels": "demo-colours"}, sample)),
        lambda: post_json(base, "/api/matrix", {"images": ids[:8], "labels": "demo-shapes"}),
        lambda: post_json(base, "/api/duplicates", {}),  # a job: its own process, so outside the RSS measured
    ]
    rng.shuffle(jobs)
    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(lambda job: job(), jobs))
    failed = [status for status, _ in answers if status >= 500]
    bad = [status for status in hostile(base, photos) if not 400 <= status < 500]
    for k, v in (("after", "9999-12-31T23:59:59"), ("before", "0001-01-01T00:00:00")):  # nothing, not an error
        status, found = request(base, "/api/search?" + urllib.parse.urlencode({"q": "x", k: v}))
        bad += [] if status == 200 and not json.loads(found)["results"] else [status]
    if failed or bad:
        raise RuntimeError(f"5xx answers: {failed}; hostile requests answered {bad}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_web_memory_"))
    photos = work / "photos"
    demoworld.write_images(photos, 48, seed=11, size_range=(64, 640), fmt="jpg")
    with Library.open(work / "lib", model=args.model) as lib:
        lib.index([photos])
        ids = [h.id for h in lib.search("a shape", k=48)]
    server = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--port", "0", "-L", str(work / "lib")],
                              stdout=subprocess.PIPE, text=True)
    try:
        base = server.stdout.readline().rsplit(" at ", 1)[1].strip().rstrip("/")
        rng = random.Random(16)
        one_round(base, photos, ids, rng, max(20, args.texts // 10), args.workers)  # everything loaded once
        baseline = previous = rss_kb(server.pid)
        print(f"after warm-up: {baseline / 1024:.0f} MB (baseline)")
        sizes = []
        for n in range(1, args.rounds + 1):
            one_round(base, photos, ids, rng, args.texts, args.workers)
            now = rss_kb(server.pid)
            sizes.append(now)
            print(f"round {n}: {now / 1024:.0f} MB, x{now / baseline:.3f} of the baseline, "
                  f"{(now - previous) / 1024:+.1f} MB this round")
            previous = now
        half = sizes[len(sizes) // 2 - 1:]
        print(f"growth per round over the second half: {(half[-1] - half[0]) / 1024 / (len(half) - 1):+.2f} MB "
              f"(x{half[-1] / half[0]:.4f})")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
