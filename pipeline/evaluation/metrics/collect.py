"""Generated and real samples -> a Partial, for any slice [start, stop) of the global index.

Sample i is a pure function of (seed, i): latents are drawn per fixed block of BLOCK indices from
a generator seeded with (seed, block), and the class asked for is i % num_classes. So 1 rank or
N ranks, each with its `rank_slice`, see the same images, and `combine` of their partials equals
one process's result. Extractor batches are aligned to multiples of batch_size in the global
index for the same reason.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from pipeline.evaluation.metrics.features import Partial



def latents(start: int, stop: int, z_dim: int, *, seed: int = 0, truncation: float | None = None) -> torch.Tensor:
    """float32 [stop - start, z_dim]: the one sampler's noise (pipeline.families.sampling)."""
    from pipeline.families.sampling import Latent, inputs
    return inputs({"z": Latent(z_dim)}, start, stop, seed=seed, truncation=truncation)["z"]


def _have(labels) -> set[str]:
    """What can be kept: no labels for an unconditional model."""
    return {"features", "logits", "glyphs"} | ({"labels"} if labels is not None else set())


def _batches(start: int, stop: int, batch_size: int):
    lo = start
    while lo < stop:
        hi = min(stop, (lo // batch_size + 1) * batch_size)
        yield lo, hi
        lo = hi


@torch.no_grad()
def fake_partial(G, extractor, start: int, stop: int, *, keep: set[str], seed: int = 0,
                 batch_size: int = 64, truncation: float | None = None,
                 oracle: Callable | None = None) -> Partial:
    """Generate samples [start, stop) through the one sampler (pipeline.families.sampling); feature
    stats always (given an extractor), and the per-sample arrays in `keep` (metrics.fake_keep).

    G: a families.generator.Generator, or a bare G(z[, y]) module. It runs in eval mode on its
    own device; extractor may be None when only oracle metrics are asked; oracle maps float
    [-1, 1] images to glyphs [B, 3]. `labels` are the classes asked for, where G takes one, or
    else its first categorical code (InfoGAN), for the metrics that compare them to the oracle.
    """
    from pipeline.families.generator import as_generator
    from pipeline.families.sampling import to_uint8

    gen = as_generator(G)
    part = Partial(start=start)
    for lo, hi in _batches(start, stop, batch_size):
        images, inputs = gen.batch(lo, hi, seed=seed, truncation=truncation)
        y = gen.labels(inputs)
        # Scored as the uint8 images `ganforge sample` writes, not the floats before rounding.
        images = to_uint8(images).float() / 127.5 - 1
        _add(part, images, extractor, keep & _have(y), y, oracle)
    return part.flush()


def real_partial(batches: Iterable, extractor, *, keep: set[str], start: int = 0,
                 oracle: Callable | None = None) -> Partial:
    """batches of (images uint8 [B, 3, H, W] or float [-1, 1], labels [B] or None) -> Partial."""
    part = Partial(start=start)
    with torch.no_grad():
        for images, labels in batches:
            if images.dtype == torch.uint8:
                images = images.float() / 127.5 - 1
            _add(part, images, extractor, keep & _have(labels), labels, oracle)
    return part.flush()


def _add(part: Partial, images, extractor, keep, labels, oracle) -> None:
    f = logits = glyphs = None
    if extractor is not None:
        f, logits = (t.cpu().numpy() for t in extractor.both(images))
    if "glyphs" in keep:
        if oracle is None:
            raise ValueError("glyphs asked for but no oracle given")
        glyphs = oracle(images.cpu())
    part.add(len(images), f, keep=keep, logits=logits, glyphs=glyphs,
             labels=None if labels is None else np.asarray(labels, np.int64))


def evaluate(G, names, *, extractor=None, ref=None, cfg=None, oracle: Callable | None = None,
             rank: int = 0, world: int = 1, gather: Callable | None = None):
    """Every rank generates and extracts its `rank_slice` of cfg.n_fake samples; rank 0 combines
    the gathered partials and computes the metrics. -> (results {name: {key: value}} on rank 0,
    None on other ranks; the combined Partial or None).

    gather(obj) -> list of every rank's obj, in rank order (e.g. torch.distributed's
    all_gather_object); called on every rank, so every rank must call evaluate together.
    cfg: a protocol.EvalConfig (its defaults when None).
    """
    from pipeline.evaluation import metrics
    from pipeline.evaluation.metrics.features import combine, rank_slice
    from pipeline.evaluation.metrics.protocol import EvalConfig

    cfg = cfg or EvalConfig()
    s = rank_slice(cfg.n_fake, rank, world)
    part = fake_partial(G, extractor, s.start, s.stop, keep=metrics.fake_keep(names), seed=cfg.seed,
                        batch_size=cfg.batch_size, truncation=cfg.truncation, oracle=oracle)
    parts = gather(part) if world > 1 else [part]
    if rank != 0:
        return None, None
    fake = combine(parts)
    return metrics.compute_all(names, fake, ref, **cfg.metric_options()), fake
