"""Reconstruction accuracy of a generator with an encoder (BiGAN/ALI, VAE-GAN), by the exact
shapestack oracle: fresh images (a seed the built-in training shards never use) go through E then
G, and the oracle reads the glyphs of each reconstruction.

  recon_glyph_acc   share of the 3 glyphs per image kept
  recon_triple_acc  share of images with all three kept
  *_chance          the same reconstructions scored against other images' glyphs: what a G that
                    ignored E's latent would score with the same output distribution (a
                    collapsed channel scores high on both, so "above chance" is the gap)
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.data.datasets import shapestack

SEED = 4321        # the built-in shards are drawn with seed 0


def builtin_oracle(gen, n: int = 500, seed: int = SEED) -> dict[str, float]:
    if not gen.encodes:
        raise ValueError(f"{gen.family.name}: reconstruction needs an encoder (BiGAN/ALI, VAE-GAN)")
    images, glyphs = shapestack.generate(n, gen.resolution(), seed)
    _, rec = gen.reconstruct(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    return scores(rec, glyphs, seed)


def scores(rec: torch.Tensor, glyphs: np.ndarray, seed: int = 0) -> dict[str, float]:
    """rec uint8 [n, 3, R, R] reconstructions of images whose glyphs are [n, 3]."""
    got = shapestack.oracle(rec.permute(0, 2, 3, 1).numpy())
    other = glyphs[np.random.default_rng(seed).permutation(len(glyphs))]
    keep, chance = got == glyphs, got == other
    return {"recon_glyph_acc": float(keep.mean()), "recon_triple_acc": float(keep.all(1).mean()),
            "recon_glyph_chance": float(chance.mean()), "recon_triple_chance": float(chance.all(1).mean())}
