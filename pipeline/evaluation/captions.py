"""Caption accuracy of a text-to-image generator, by the exact shapestack oracle: it draws one
image per built-in caption (every triple equally often, the phrasings in turn) and the oracle
reads the image's glyphs.

  caption_acc          share of images showing all three glyphs their caption names
  caption_glyph_acc    share of the 3 glyphs per image that match
  *_chance             the same images scored against other captions' triples: what a G that
                       ignored its caption would score with the same output distribution
"""
from __future__ import annotations

import numpy as np

from pipeline.data.captions import eval_captions
from pipeline.data.datasets import shapestack

SEED = 2468


def builtin_oracle(gen, n: int = 1000, seed: int = SEED, batch: int = 256) -> dict[str, float]:
    key = gen.text_input
    if key is None:
        raise ValueError(f"{gen.family.name}: caption accuracy needs a text-to-image generator (gan_int_cls)")
    captions, glyphs = eval_captions(n, seed)
    images = [gen.batch(i, min(n, i + batch), seed=seed, fixed={key: captions[i:i + batch]})[0]
              for i in range(0, n, batch)]
    import torch
    return scores(torch.cat(images), glyphs, seed)


def scores(images, glyphs: np.ndarray, seed: int = 0) -> dict[str, float]:
    """images float [n, 3, R, R] in [-1, 1] (or uint8 HWC) asked to show triples glyphs [n, 3]."""
    got = shapestack.oracle(images)
    other = glyphs[np.random.default_rng(seed).permutation(len(glyphs))]
    hit, chance = got == glyphs, got == other
    return {"caption_acc": float(hit.all(1).mean()), "caption_glyph_acc": float(hit.mean()),
            "caption_chance": float(chance.all(1).mean()), "caption_glyph_chance": float(chance.mean())}
