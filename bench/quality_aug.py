"""Augmentation on a tiny set of real images (issue 16): FID against wall-clock minutes of the same
preset trained on 256 built-in animals silhouettes with no augmentation, DiffAugment and ADA.

    python bench/quality_aug.py [ARM ...] [--minutes 10] [--at 2,4,6,8,10] [--n 2000]
                                [--set key=value ...] [--threads 2] [--out DIR]

An ARM is PRESET[+key=value...]; by default the quickstart's DCGAN three ways. Every arm gets
--set data.builtin=animals data.builtin_samples=256 (change them with --set). Each trains
through the engine's local context (no Ray, no MLflow) for a wall-clock budget; at each mark its
checkpointed generator (the EMA copy) draws n images, scored (scoring time not counted) by
  fid    against all 10,000 animals: what G should have learnt, not the 256 it saw
         (ganforge-small-animals: offline, fitted here if missing; compares with itself only)
  fid_train   against the first 256 (the training set unless --set changes it): a G that copies
              them scores low here and high above
and aug_p, ADA's augmentation probability, where the arm runs ADA. Needs `pip install 'ganforge[animals]'`.
On ShapeStack a tiny set shows nothing (G redraws 256 glyph triples exactly and D never
overfits); real silhouettes are where D memorises and augmentation has work to do.
A benchmark that prints figures, not a test: they depend on the machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import clocked   # the clocked training run and command line shared by the oracle benchmarks (bench/)

from pipeline.data.datasets import animals
from pipeline.evaluation import translation as T
from pipeline.families import sampling

# ADA with its geometric half: the default bgc's luma flip leaked on white-on-black silhouettes
# (G drew inverted animals, FID 61 against 11 without augmentation at 6 minutes).
ARMS = ["quickstart", "quickstart+aug.kind=diffaugment",
        "quickstart+aug.kind=ada+aug.ada_pipeline=bg+aug.ada_speed_kimg=100"]
TINY = 256
_reals: dict[tuple[int, int], torch.Tensor] = {}


def reals(n: int, resolution: int) -> torch.Tensor:
    """uint8 [n, 3, R, R]: the first n of built-in animals' order (n=TINY: the training set)."""
    if (n, resolution) not in _reals:
        images = np.stack([img for _, img, _ in animals.samples(n, resolution)])
        _reals[n, resolution] = torch.from_numpy(images).permute(0, 3, 1, 2)
    return _reals[n, resolution]


def score(gen, n: int, grid: Path | None, extractor) -> dict:
    images = gen.sample(n, seed=0)
    r = gen.resolution()
    fid, _ = T.fid_against(images, reals(10_000, r), extractor)
    fid_train, _ = T.fid_against(images, reals(TINY, r), extractor)
    if grid is not None:
        sampling.write_grid(images[:64], grid, nrow=8)
    return {"fid": fid, "fid_train": fid_train}


if __name__ == "__main__":
    clocked.main(__doc__, ARMS, score, fid="animals", n_help="images drawn and scored at each mark",
                 out="bench_out/aug", sets=["data.builtin=animals", f"data.builtin_samples={TINY}"])
