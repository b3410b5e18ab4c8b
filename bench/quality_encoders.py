"""Reconstruction against wall-clock minutes for the families with an encoder: BiGAN, ALI and
VAE-GAN on built-in shapestack, scored by the exact oracle.

    python bench/quality_encoders.py [PRESET ...] [--minutes 10] [--at 1,2,5,10] [--n 1000]
                                     [--set key=value ...] [--threads 2] [--out DIR]

Each preset (default: bigan32 ali32 vaegan32) trains through the engine's local context (the real
phases and data stream; no Ray, no MLflow) for a wall-clock budget; at each mark its checkpointed
EMA networks reconstruct n fresh images (pipeline/evaluation/reconstruction.py; scoring time not
counted), and the oracle also scores n samples for mode coverage:
  recon_glyph_acc  glyphs kept through E then G (chance: the *_chance column beside it)
  recon_triple_acc all three kept                  modes / kl  coverage of n samples
A grid per mark (PRESET_Mmin.png): 16 images beside their reconstructions. A benchmark that
prints figures, not a test: they depend on the machine.
"""
from __future__ import annotations

from pathlib import Path

import torch

import clocked   # the clocked training run and command line shared by the oracle benchmarks (bench/)

from pipeline.data.datasets import shapestack
from pipeline.evaluation import reconstruction as R
from pipeline.evaluation.metrics.coverage import mode_coverage
from pipeline.families import sampling


def score(gen, n: int, grid: Path | None, extractor=None) -> dict:
    images, glyphs = shapestack.generate(n, gen.resolution(), R.SEED)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    _, rec = gen.reconstruct(x)
    out = R.scores(rec, glyphs, R.SEED)
    cov = mode_coverage(shapestack.oracle(gen.sample(n, seed=1).permute(0, 2, 3, 1).numpy()))
    if grid is not None:
        sampling.write_grid(torch.stack([x[:16], rec[:16]], 1).flatten(0, 1), grid, nrow=8)
    return {**out, "modes": cov["modes"], "kl": cov["kl"]}


if __name__ == "__main__":
    clocked.main(__doc__, ["bigan32", "ali32", "vaegan32"], score,
                 n_help="images reconstructed (and sampled) at each mark", out="bench_out/encoders",
                 label=lambda k: k.removeprefix("recon_"))
