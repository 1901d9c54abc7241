"""The text tower as ONNX, so that a text query needs neither torch nor open_clip.

Importing torch and open_clip costs ~5 s on a small CPU machine; onnxruntime, the
tokenizer and a session over memory-mapped weights cost ~0.2 s (``benchmarks/bench_cold.py``
measures both, as whole processes). The library keeps, in
``text-onnx/``:

* ``text.onnx`` + ``text.onnx.data``: ``encode_text`` exported by torch's dynamo exporter
  (opset 18) with dynamic batch *and* sequence axes, weights in a separate file that
  onnxruntime maps instead of parsing;
* ``bpe.txt.gz``: the merges the tokenizer needs (``tokenizer.py``);
* ``meta.json``, written last: the model it was made from, context length, dimension,
  logit scale, and the checks it passed.

A query feeds only the tokens up to the batch's last end-of-text token: CLIP's text
transformer is causal and reads its output at that token, so the result is the same.
``export`` refuses models where that does not hold (other tokenizers, other pooling):
those keep the torch path. The export is checked before it is kept: the standalone
tokenizer against open_clip's, and onnxruntime's embeddings against torch's (cosine >=
0.9999).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import onnxtower
from .onnxtower import NotExportable

__all__ = ["FOLDER", "NotExportable", "OnnxTextEncoder", "export", "load"]

FOLDER = "text-onnx"
MIN_COSINE = 0.9999
_CHECK = ["", "a photo of a cat", "A PHOTO OF A DOG!!", "café crème 日本語 😀 &amp; <b>x</b>",
          " ".join(["long"] * 200), "<end_of_text> tricky", "red", "a blue square on a white background"]


class OnnxTextEncoder:
    """Text embeddings from a saved ``text-onnx`` folder: onnxruntime, numpy and regex only."""

    def __init__(self, folder: Path, meta: dict):
        from .tokenizer import ClipTokenizer

        self.meta = meta
        self.dim = int(meta["dim"])
        self.logit_scale = float(meta["logit_scale"])
        self.tokenize = ClipTokenizer(folder / "bpe.txt.gz", int(meta["context_length"]))
        self.session = onnxtower.session(folder / "text.onnx", cold=True)

    def encode_texts(self, texts: list[str], batch: int = 64) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), batch):
            ids = self.tokenize(list(texts[start:start + batch]))
            ids = ids[:, :int(ids.argmax(1).max()) + 1]  # end-of-text is the largest id
            v = self.session.run(None, {"tokens": ids})[0]
            out[start:start + batch] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def load(root: Path, model: str) -> OnnxTextEncoder | None:
    """The library's exported text tower, if there is one for ``model`` and onnxruntime is here."""
    folder = root / FOLDER
    meta = onnxtower.read_meta(folder, model)
    if meta is None:
        return None
    try:
        return OnnxTextEncoder(folder, meta)
    except ImportError:
        return None


def export(model, tokenizer, root: Path, model_name: str) -> dict:
    """Export ``model``'s text tower (an open_clip ``CLIP``) into ``root/text-onnx``; returns
    its meta. Raises :class:`NotExportable` for models the ONNX path cannot serve exactly."""
    import open_clip
    import torch

    from .tokenizer import ClipTokenizer, write_merges

    if type(tokenizer).__name__ != "SimpleTokenizer" or getattr(tokenizer, "reduction_fn", None) is not None \
            or getattr(getattr(tokenizer, "clean_fn", None), "__name__", "") != "_clean_lower":
        raise NotExportable(f"its tokenizer ({type(tokenizer).__name__}) is not CLIP's byte-pair one")
    if getattr(model, "text_pool_type", None) != "argmax" or getattr(model, "attn_mask", None) is None:
        raise NotExportable("its text tower is not a causal transformer read at the end-of-text token")
    with onnxtower.building(root, FOLDER) as work:
        started = time.perf_counter()
        context = int(tokenizer.context_length)
        example = tokenizer(["a photo of a cat", "a dog"])[:, :context // 2 + 1]  # neither 1 nor full length
        onnxtower.export(_text_tower(model), (example,), work / "text.onnx", "tokens",
                         {0: torch.export.Dim("batch", min=1, max=4096),
                          1: torch.export.Dim("seq", min=2, max=context)})
        write_merges(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", work / "bpe.txt.gz")
        ids = ClipTokenizer(work / "bpe.txt.gz", context)(_CHECK)
        if not np.array_equal(ids, tokenizer(_CHECK).numpy()):
            raise NotExportable("the standalone tokenizer does not match open_clip's for this model")
        with torch.inference_mode():
            expected = model.encode_text(torch.from_numpy(ids)).float().numpy()
        meta = {"model": model_name, "context_length": context, "dim": int(expected.shape[1]),
                "logit_scale": float(model.logit_scale.detach().exp().item()), "opset": 18,
                "torch": torch.__version__, "open_clip": open_clip.__version__,
                "export_seconds": round(time.perf_counter() - started, 2)}
        got = OnnxTextEncoder(work, meta).encode_texts(_CHECK, batch=1)
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        meta["check_min_cosine"] = cosine = float((got * expected).sum(1).min())
        if cosine < MIN_COSINE:
            raise NotExportable(f"its ONNX export differs from torch (cosine {cosine:.6f})")
        onnxtower.write_meta(work, meta)
    return meta


def _text_tower(model):
    """``encode_text`` of an open_clip ``CLIP`` over a token prefix of any length: positional
    embeddings and the causal mask are cut to the input's length (see the module docstring).
    The class is made here so that importing this module does not import torch."""
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, tokens):
            m = self.clip
            n = tokens.shape[1]
            x = m.token_embedding(tokens) + m.positional_embedding[:n]
            x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:n, :n]))
            x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
            return m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection

    return TextTower(model)
