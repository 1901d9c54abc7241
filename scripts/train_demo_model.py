"""Train the bundled demo model: a tiny CLIP for the demo world of coloured shapes.

This is a development script, not part of the runtime package. It draws its own
synthetic images (``clipsearch.demoworld``), trains an open_clip model from the
JSON config in ``data/demo_model`` with open_clip's own ``ClipLoss``, prints held-out
accuracy, and writes ``open_clip_model.safetensors`` next to the config (fp16, to keep
the file small; it is loaded into an fp32 model like any other checkpoint).

The committed checkpoint was made in two runs (about 35 + 25 minutes on 2 CPU cores);
the second continues from the first's weights on freshly drawn images:

    python scripts/train_demo_model.py --fresh --images 30000 --steps 3500
    python scripts/train_demo_model.py --images 20000 --seed 1 --steps 2500 --lr 4e-4
    python scripts/train_demo_model.py --eval-only  # re-check the committed checkpoint

Without --fresh, training starts from the checkpoint in data/demo_model when there is one.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import open_clip
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipsearch import demoworld as dw  # noqa: E402
from clipsearch.pixels import PixelSpec, model_pixels  # noqa: E402

MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "demo_model"
MODEL_NAME = f"local-dir:{MODEL_DIR}"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


TEMPLATES = ["a photo of {a} {x}", "{a} {x}", "{x}", "a picture of {a} {x}", "an image of {a} {x}",
             "a photo of the {x}", "a drawing of {a} {x}", "a {x}", "this is a photo of {a} {x}"]


def caption(rng: random.Random, colour: str, shape: str) -> str:
    """Full, colour-only and shape-only captions, so that any of the three label sets works."""
    kind = rng.random()
    if kind < 0.5:
        x = f"{colour} {shape}"
    elif kind < 0.62:
        x = f"{colour} shape"
    elif kind < 0.75:
        x = colour
    else:
        x = shape
    if rng.random() < 0.08:
        return f"something {colour}" if kind < 0.75 else f"a shape like a {shape}"
    t = rng.choice(TEMPLATES)
    return t.format(a=article(x), x=x)


def _make_chunk(args) -> tuple[np.ndarray, list[tuple[str, str]]]:
    seed, count, renderer, size = args
    rng = random.Random(seed)
    # The model's own resize and centre crop (pixels.py, tested equal to open_clip's), done
    # once up front; normalisation happens per batch in to_tensor.
    spec = PixelSpec(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    pixels, labels = [], []
    for _ in range(count):
        scene = dw.random_scene(rng, size_range=(64, 1000))
        style = dw.random_style(rng)
        pixels.append(model_pixels(dw.render(scene, renderer, **style), spec))
        labels.append((scene.colour, scene.shape))
    return np.stack(pixels), labels


def make_dataset(n: int, seed: int, renderer: str, size: int, workers: int = 2):
    chunk = 250
    jobs = [(seed * 100003 + i, min(chunk, n - i * chunk), renderer, size) for i in range(math.ceil(n / chunk))]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_make_chunk, jobs)
    return np.concatenate([p for p, _ in parts]), [lab for _, labs in parts for lab in labs]


def to_tensor(pixels: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def evaluate(model, tokenizer, mean, std, size: int, n: int = 960, seed: int = 999) -> dict:
    model.eval()
    combos = [(c, s) for c in dw.COLOURS for s in dw.SHAPES]
    text = tokenizer([f"{article(c)} {c} {s}" for c, s in combos])
    tf = F.normalize(model.encode_text(text), dim=-1)
    colour_tf = F.normalize(model.encode_text(tokenizer([f"a photo of {article(c)} {c}" for c in dw.COLOURS])), dim=-1)
    shape_tf = F.normalize(model.encode_text(tokenizer([f"a photo of a {s}" for s in dw.SHAPES])), dim=-1)
    out = {}
    for renderer in ("pil", "sdf"):
        pixels, labels = make_dataset(n, seed, renderer, size)
        imf = torch.cat([F.normalize(model.encode_image(to_tensor(pixels[i:i + 256], mean, std)), dim=-1)
                         for i in range(0, len(pixels), 256)])
        truth = torch.tensor([combos.index(lab) for lab in labels])
        out[f"{renderer}_top1"] = (imf @ tf.T).argmax(1).eq(truth).float().mean().item()
        ctruth = torch.tensor([list(dw.COLOURS).index(c) for c, _ in labels])
        struth = torch.tensor([dw.SHAPES.index(s) for _, s in labels])
        out[f"{renderer}_colour_top1"] = (imf @ colour_tf.T).argmax(1).eq(ctruth).float().mean().item()
        out[f"{renderer}_shape_top1"] = (imf @ shape_tf.T).argmax(1).eq(struth).float().mean().item()
        # text -> image precision@4: for every label, how many of the 4 best images carry it.
        top4 = (tf @ imf.T).topk(4, dim=1).indices
        out[f"{renderer}_p@4"] = truth[top4].eq(torch.arange(len(combos)).view(-1, 1)).float().mean().item()
    model.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40000, help="training images to draw")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="start from random weights, not the saved checkpoint")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    model = open_clip.create_model(MODEL_NAME, load_weights=not args.fresh)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    cfg = model.visual.preprocess_cfg
    size, mean, std = cfg["size"], cfg["mean"], cfg["std"]
    size = size if isinstance(size, int) else size[0]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, image size {size}")

    if args.eval_only:
        print(evaluate(model, tokenizer, mean, std, size))
        return

    t0 = time.time()
    pixels, labels = make_dataset(args.images, args.seed, "pil", size)
    print(f"drew {len(pixels)} training images in {time.time() - t0:.0f}s")

    loss_fn = ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (args.steps - warmup))))
    rng = random.Random(args.seed)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        idx = rng.sample(range(len(pixels)), args.batch)
        batch = pixels[idx]
        if rng.random() < 0.5:  # every shape is mirror-symmetric up to rotation
            batch = batch[:, :, ::-1]
        images = to_tensor(np.ascontiguousarray(batch), mean, std)
        texts = tokenizer([caption(rng, *labels[i]) for i in idx])
        img_f, txt_f, scale = model(images, texts)
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  scale {model.logit_scale.exp().item():.1f}  "
                  f"{(time.time() - t0) / (step + 1):.2f}s/step", flush=True)
        if step and step % 1000 == 0:
            print(evaluate(model, tokenizer, mean, std, size, n=480), flush=True)

    result = evaluate(model, tokenizer, mean, std, size)
    print("held-out:", {k: round(v, 3) for k, v in result.items()})
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(MODEL_DIR / "open_clip_model.safetensors"))
    print(f"saved {MODEL_DIR / 'open_clip_model.safetensors'}")


if __name__ == "__main__":
    main()
