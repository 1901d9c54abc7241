"""CLIP's byte-pair tokenizer without torch or open_clip, for cold text queries.

It gives exactly the token ids of open_clip's ``SimpleTokenizer`` (``clean="lower"``, no
reduction), truncation included (a cut row ends in the end-of-text token); the tests
compare the two on thousands of strings. It needs the BPE merges (the 48,894 that are
used, kept as a 208 kB copy by ``write_merges``) and the model's context length.
``ftfy``, which costs ~60 ms to import (``python -X importtime -c 'import ftfy'`` on the
2-core CPU machine), is only loaded for text that is not plain printable ASCII without
``&``: for such text it changes nothing.

    tokenize = ClipTokenizer("bpe.txt.gz", context_length=77)
    ids = tokenize(["a photo of a cat"])      # int64 (n, context_length)
"""
from __future__ import annotations

import gzip
import html
import os
from functools import lru_cache

import numpy as np
import regex

N_MERGES = 49152 - 256 - 2  # 48,894: open_clip reads merges[1:49152-256-2+1]
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
# Plain printable ASCII with \t\n\r and without '&', which ftfy and html.unescape leave as it is.
_NEEDS_FIX = regex.compile(r"[^\t\n\r\x20-\x25\x27-\x7e]")


class BoundedCache(dict):
    """A BPE cache that starts over once its words and their merges add up to ``limit``
    characters, keeping the entries it began with (the special tokens, which must never be
    split). A tokenizer caches every word it meets, and a server meets whatever words its
    requests make up: unbounded, that is a leak. 10^6 characters hold ~10^5 common words,
    in at most a few MB (a character takes one to four bytes)."""

    def __init__(self, initial: dict[str, str], limit: int = 1_000_000):
        super().__init__(initial)
        self._initial, self._limit, self._chars = dict(initial), limit, 0

    def __setitem__(self, word: str, merged: str) -> None:
        self._chars += len(word) + len(merged)
        if self._chars > self._limit:
            self.clear()
            self.update(self._initial)
            self._chars = len(word) + len(merged)
        super().__setitem__(word, merged)


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Each byte's printable stand-in, as CLIP's BPE vocabulary spells bytes.

    This table is OpenAI's, from CLIP's ``simple_tokenizer.py`` (https://github.com/openai/CLIP,
    MIT licence, copyright (c) 2021 OpenAI), which open_clip carries too: the ids must match
    theirs exactly, so it is theirs, not a reimplementation."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_merges(path: str | os.PathLike) -> list[str]:
    """The first N_MERGES merge lines ("a b") of a (gzipped) open_clip BPE file, with or
    without its '"bpe_simple_vocab_16e6.txt#version: 0.2' header line."""
    with open(path, "rb") as f:
        raw = f.read()
    text = (gzip.decompress(raw) if str(path).endswith(".gz") else raw).decode("utf-8")
    skip = 1 if text.startswith(('"bpe_simple_vocab', "#")) else 0
    out = text.split("\n", N_MERGES + skip)[skip:N_MERGES + skip]
    if len(out) != N_MERGES or " " not in out[-1]:
        raise ValueError(f"{path}: expected {N_MERGES} merges, found {len(out)}")
    return out


def write_merges(src: str, dst: str) -> None:
    """Keep only the merges the tokenizer uses (about 3x smaller to read)."""
    merges = read_merges(src)
    with gzip.open(dst, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("\n".join(merges))


def _clean(text: str) -> str:
    """open_clip's basic_clean + whitespace_clean + lower."""
    if _NEEDS_FIX.search(text):
        import ftfy

        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
    text = text.strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Text to token ids, as open_clip's ``SimpleTokenizer``; see the module docstring."""

    def __init__(self, bpe_path: str | os.PathLike, context_length: int = 77):
        self.byte_encoder = bytes_to_unicode()
        merges = read_merges(bpe_path)
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += [m.replace(" ", "") for m in merges]
        vocab += SPECIAL_TOKENS
        self.encoder = dict(zip(vocab, range(len(vocab))))
        # Keyed by the raw "first second" line: no tuples to build while loading.
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = BoundedCache({t: t for t in SPECIAL_TOKENS})
        self.pat = regex.compile(
            "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self.sot_token_id = self.encoder[SPECIAL_TOKENS[0]]  # 49406
        self.eot_token_id = self.encoder[SPECIAL_TOKENS[1]]  # 49407
        self.vocab_size = len(self.encoder)  # 49408
        self.context_length = context_length

    def bpe(self, token: str) -> str:
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word = list(token[:-1]) + [token[-1] + "</w>"]
        ranks = self.bpe_ranks
        inf = float("inf")
        while len(word) > 1:
            # The lowest-ranked adjacent pair (ranks are unique, so there are no ties).
            best, best_rank = None, inf
            for a, b in zip(word, word[1:]):
                r = ranks.get(a + " " + b, inf)
                if r < best_rank:
                    best, best_rank = (a, b), r
            if best is None:
                break
            first, second = best
            new_word, i, n = [], 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = new_word
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        be, enc = self.byte_encoder, self.encoder
        for token in self.pat.findall(_clean(text)):
            token = "".join(be[b] for b in token.encode("utf-8"))
            ids.extend(enc[t] for t in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        out = np.zeros((len(texts), ctx), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > ctx:
                ids = ids[:ctx]
                ids[-1] = self.eot_token_id
            out[i, :len(ids)] = ids
        return out
