"""Every odd or broken file is handled: odd ones become RGB and are indexed, broken ones are
skipped with their reason, and nothing stops the run. The corpus is generated here."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library
from clipsearch.decodepool import DecodeLimits, DecodePool
from clipsearch.images import decode_image
from clipsearch.pixels import PixelSpec

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _save(path: Path, im: Image.Image, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path


def _transparent_palette() -> Image.Image:
    im = Image.new("P", (50, 50), 0)  # every pixel is palette entry 0: red, and fully transparent
    im.putpalette(list(RED) + [0] * 765)
    return im


def odd_corpus(root: Path) -> dict[str, Path]:
    """Files that are unusual but valid: each must be indexed."""
    red = Image.new("RGB", (120, 90), RED)
    blue = Image.new("RGB", (120, 90), BLUE)
    files = {
        "cmyk": _save(root / "cmyk.jpg", red.convert("CMYK")),
        "palette_transparent": _save(root / "p.png", _transparent_palette(), transparency=0),
        "la": _save(root / "la.png", Image.new("LA", (50, 50), (128, 200))),
        "sixteen_bit": _save(root / "i16.png", Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))),
        "float": _save(root / "float.tif", Image.fromarray(np.linspace(0, 1, 900, dtype=np.float32).reshape(30, 30))),
        "animated_gif": _save(root / "anim.gif", red, save_all=True, append_images=[blue], duration=100),
        "animated_webp": _save(root / "anim.webp", red, save_all=True, append_images=[blue], duration=100),
        "multipage_tiff": _save(root / "pages.tiff", red, save_all=True, append_images=[blue]),
        "tiny": _save(root / "tiny.png", Image.new("RGB", (1, 1), RED)),
        "huge": _save(root / "huge.jpg", Image.new("RGB", (8000, 6000), RED), quality=50),
        "heic": _save(root / "phone.heic", red, "HEIF"),
        "avif": _save(root / "modern.avif", red, "AVIF"),
        "bmp": _save(root / "old.bmp", red),
        "grey": _save(root / "grey.jpg", Image.new("L", (40, 40), 90)),
    }
    return files


def broken_corpus(root: Path) -> dict[str, tuple[Path, str]]:
    """Files that cannot be indexed, with the start of the reason each must be recorded with."""
    root.mkdir(parents=True, exist_ok=True)
    good_jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)).save(good_jpeg, "JPEG")
    png = io.BytesIO()
    Image.new("RGB", (200, 200), RED).save(png, "PNG")
    corrupt = bytearray(png.getvalue())
    corrupt[60:120] = b"\x00" * 60
    cases = {
        "truncated": ("truncated.jpg", good_jpeg.getvalue()[:2000], "broken image"),
        "corrupt": ("corrupt.png", bytes(corrupt), "broken image"),
        "zero_bytes": ("zero.jpg", b"", "empty file"),
        "not_an_image": ("notes.png", b"just some text, not pixels\n" * 10, "not an image"),
        "bomb": ("bomb.png", None, "image too large"),
        "bad_raw": ("camera.dng", b"II*\x00 definitely not a raw file", "broken RAW file"),
    }
    out = {}
    for name, (filename, data, reason) in cases.items():
        path = root / filename
        if data is None:  # 20000 x 20000 of zeros: 400 megapixels in a few hundred kilobytes
            Image.new("1", (20000, 20000)).save(path)
        else:
            path.write_bytes(data)
        out[name] = (path, reason)
    # A name that is not valid UTF-8 (a file copied from an old Latin-1 system).
    raw_name = os.fsencode(str(root)) + b"/caf\xe9.png"
    Image.new("RGB", (20, 20), RED).save(raw_name, "PNG")
    out["undecodable_name"] = (Path(str(root) + "/caf\\xe9.png"), "file name is not valid UTF-8")
    return out


@pytest.mark.parametrize("name, expected", [
    ("cmyk", RED), ("palette_transparent", (255, 255, 255)), ("animated_gif", RED), ("animated_webp", RED),
    ("multipage_tiff", RED), ("tiny", RED), ("huge", RED), ("heic", RED), ("avif", RED), ("bmp", RED),
])
def test_odd_images_decode_to_the_right_rgb(tmp_path, name, expected):
    path = odd_corpus(tmp_path)[name]
    image, width, height, _ = decode_image(path.read_bytes(), 64, suffix=path.suffix)
    assert image.mode == "RGB" and width > 0 and height > 0
    centre = image.getpixel((image.width // 2, image.height // 2))
    assert np.allclose(centre, expected, atol=40), (name, centre)


def test_the_whole_corpus_indexes_with_the_demo_model(tmp_path):
    odd = odd_corpus(tmp_path / "corpus" / "odd")
    broken = broken_corpus(tmp_path / "corpus" / "broken")
    started = time.perf_counter()
    with Library.open(tmp_path / "lib", model="demo") as lib:
        report = lib.index([tmp_path / "corpus"], limits=DecodeLimits(timeout_s=60, max_megapixels=100))
        seconds = time.perf_counter() - started
        reasons = {e.path: e.reason for e in report.errors}
        assert report.added == len(odd), reasons
        for name, (path, reason) in broken.items():
            assert reasons.get(str(path), "").startswith(reason), (name, reasons.get(str(path)))
        assert len(report.errors) == len(broken)
        info = lib.info()
        assert (info.images, info.vectors, info.errors) == (len(odd), len(odd), len(broken))
        assert {e.path for e in lib.errors()} == {str(p) for p, _ in broken.values()}
    print(f"odd-files corpus: {len(odd) + len(broken)} files indexed in {seconds:.1f}s")


# -- the decode pool's bounds ------------------------------------------------------------

SPEC = PixelSpec(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def run_pool(paths, limits, known=lambda h: False):
    pool = DecodePool(1, lambda: SPEC, known, limits)
    return {r.key: r for r in pool.run([(i, str(p)) for i, p in enumerate(paths)])}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a file that never finishes reading is a FIFO")
def test_a_decode_that_runs_too_long_is_abandoned_and_the_next_file_still_works(tmp_path):
    # The time limit covers reading and decoding. A FIFO that no one writes to is a file
    # whose read never ends (like one on a hung network disk): too slow on any machine,
    # where a large picture's decode time depends on how fast and busy the machine is.
    slow = tmp_path / "slow.png"
    os.mkfifo(slow)
    ok = _save(tmp_path / "ok.png", Image.new("RGB", (50, 40), RED))
    results = run_pool([ok, slow, ok], DecodeLimits(timeout_s=0.2))
    assert results[1].error.startswith("decoding took longer than 0.2s")
    assert results[0].error is None and results[2].error is None
    assert results[2].pixels.shape == (32, 32, 3) and (results[0].width, results[0].height) == (50, 40)


def test_a_decode_that_needs_too_much_memory_is_stopped(tmp_path):
    # 12000 x 12000 RGB needs 432 MB as soon as Pillow decodes it, over a 500 MB address space.
    big = _save(tmp_path / "big.png", Image.new("RGB", (12000, 12000)))
    ok = _save(tmp_path / "ok.png", Image.new("RGB", (50, 40), RED))
    results = run_pool([big, ok], DecodeLimits(memory_mb=500, max_megapixels=1000))
    assert "memory limit" in results[0].error
    assert results[1].error is None


def test_known_content_is_not_decoded(tmp_path):
    ok = _save(tmp_path / "ok.png", Image.new("RGB", (50, 40), RED))
    [result] = run_pool([ok], DecodeLimits(), known=lambda h: True).values()
    assert result.same_content and result.pixels is None and result.content_hash


def test_retry_errors_tries_unchanged_failures_again(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _save(photos / "big.png", Image.new("RGB", (3000, 2000), BLUE))
    _save(photos / "small.png", Image.new("RGB", (30, 20), RED))
    with Library.open(tmp_path / "lib", model="demo") as lib:
        report = lib.index([photos], limits=DecodeLimits(max_megapixels=1))
        assert report.added == 1 and report.errors[0].reason.startswith("image too large")
        # Unchanged, so not retried by default, even with a higher cap...
        assert lib.index([photos]).unchanged == 2
        # ...until asked to.
        report = lib.index([photos], retry_errors=True)
        assert report.updated == 1 and not report.errors and lib.info().errors == 0


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads a process's environment from /proc")
def test_decode_workers_start_with_one_math_thread_and_the_parent_keeps_its_settings(monkeypatch):
    # numpy is imported while a worker unpickles its arguments, before its main runs: with
    # one OpenBLAS thread per core there, a many-core machine tripped the memory limit.
    import multiprocessing as mp

    from clipsearch.decodepool import DecodeLimits, _Worker

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    worker = _Worker(mp.get_context("spawn"), DecodeLimits())
    try:
        # Once it says it is ready it has surely exec'd: before that, /proc may still show
        # the forked parent's environment.
        assert worker.conn.poll(60) and worker.conn.recv()[0] == "ready"
        env = dict(item.split("=", 1) for item in
                   Path(f"/proc/{worker.proc.pid}/environ").read_text().split("\0") if "=" in item)
    finally:
        worker.proc.kill()
        worker.proc.join()
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    assert "OPENBLAS_NUM_THREADS" not in os.environ


def test_decode_workers_that_cannot_start_stop_the_run_with_a_clear_error(tmp_path):
    # A worker that cannot even import its decoder (here: one megabyte of address space)
    # is started again a few times, then the run stops instead of looping for ever.
    from clipsearch.decodepool import DecodeLimits, DecodePool
    from clipsearch.errors import ClipSearchError

    pool = DecodePool(1, lambda: None, lambda _hash: False, DecodeLimits(memory_mb=1))
    with pytest.raises(ClipSearchError, match="failed to start"):
        list(pool.run([(0, str(tmp_path / "a.jpg"))]))


@pytest.mark.parametrize("noticed", ["before the run", "when given a file"])
def test_a_kept_worker_that_died_while_idle_is_replaced(tmp_path, noticed):
    # A cluster actor keeps its decode workers between batches (cluster.py); one that dies
    # in between (the OOM killer, an operator) must cost nothing, not stop the run.
    ok = [_save(tmp_path / f"ok{i}.png", Image.new("RGB", (50, 40), RED)) for i in range(3)]
    pool = DecodePool(1, lambda: SPEC, lambda _hash: False, keep_workers=True)
    assert all(r.error is None for r in pool.run([(0, str(ok[0]))]))
    [kept] = pool._kept
    kept.proc.kill()
    kept.proc.join()
    if noticed == "when given a file":  # it dies between the check and the first send
        kept.proc.is_alive = lambda: True
    results = {r.key: r for r in pool.run([(i, str(p)) for i, p in enumerate(ok)])}
    assert sorted(results) == [0, 1, 2] and all(r.error is None for r in results.values())
    assert all(r.pixels.shape == (32, 32, 3) for r in results.values())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="holds a worker mid-file with a FIFO")
def test_ctrl_c_reaches_no_decode_worker_and_its_file_still_decodes(tmp_path, capfd):
    # A terminal's Ctrl-C goes to every process of the job, decode workers included; the
    # indexing process stops them, so a worker must neither die of it nor print a
    # KeyboardInterrupt traceback. The FIFO holds the worker inside its file: opening it
    # for writing returns once the worker has opened it to read.
    fifo = tmp_path / "held.png"
    os.mkfifo(fifo)
    png = io.BytesIO()
    Image.new("RGB", (50, 40), RED).save(png, "PNG")
    pool = DecodePool(1, lambda: SPEC, lambda _hash: False, DecodeLimits(timeout_s=120))
    results = []
    others = set(multiprocessing.active_children())
    consumer = threading.Thread(target=lambda: results.extend(pool.run([(0, str(fifo))])))
    consumer.start()
    try:
        deadline = time.monotonic() + 120  # only against a hang
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # fails (ENXIO) until a reader has it open
                break
            except OSError:
                assert time.monotonic() < deadline and consumer.is_alive(), results
                time.sleep(0.01)
        [worker] = set(multiprocessing.active_children()) - others
        os.kill(worker.pid, signal.SIGINT)
        os.write(fd, png.getvalue())
        os.close(fd)
    finally:
        consumer.join(120)
    [result] = results
    assert result.error is None and result.pixels.shape == (32, 32, 3), result.error
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_every_child_starts_deaf_to_ctrl_c_even_the_first_of_a_process():
    # The first spawned child of a process also starts multiprocessing's resource tracker,
    # which unblocks SIGINT in the starting thread on its way out: that first worker then
    # started able to take Ctrl-C while still importing, and printed a traceback from its
    # site module (seen in CI, where start-up is slow). Each child here raises SIGINT at
    # itself as soon as it runs: blocked, it stays pending and the child exits 0. A fresh
    # interpreter, because this one's tracker may already be running.
    script = (
        "import multiprocessing, signal\n"
        "from clipsearch.decodepool import start_child\n"
        "ctx = multiprocessing.get_context('spawn')\n"
        "codes = []\n"
        "for _ in range(2):\n"
        "    child = ctx.Process(target=signal.raise_signal, args=(signal.SIGINT,))\n"
        "    start_child(child)\n"
        "    child.join(60)\n"
        "    codes.append(child.exitcode)\n"
        "print(codes, signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # Both children exited cleanly, and the parent's own mask is as it was: SIGINT open.
    assert done.stdout.split("\n")[0] == "[0, 0] False", done.stdout + done.stderr
    assert "KeyboardInterrupt" not in done.stderr, done.stderr
