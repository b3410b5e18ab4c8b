"""ShapeStack mode coverage: the exact oracle reads each image's three glyphs (1000 modes).

Reports modes hit at least once and KL(generated mode histogram || uniform over 1000), in nats.
For class-conditional models, oracle accuracy is the share of samples whose first glyph (the
shapestack class label) is the class that was asked for.
"""
from __future__ import annotations

import numpy as np

from pipeline.evaluation.metrics import register

MODES = 1000


def mode_coverage(glyphs) -> dict[str, float]:
    """glyphs [N, 3] -> {"modes": distinct modes seen, "kl": KL(hist || uniform) in nats}."""
    g = np.asarray(glyphs, np.int64)
    if g.ndim != 2 or g.shape[1] != 3 or len(g) == 0:
        raise ValueError(f"glyphs must be a non-empty [N, 3] array, got shape {g.shape}")
    counts = np.bincount(g[:, 0] * 100 + g[:, 1] * 10 + g[:, 2], minlength=MODES)
    p = counts[counts > 0] / len(g)
    return {"modes": int((counts > 0).sum()), "kl": float((p * np.log(p * MODES)).sum())}


def class_accuracy(glyphs, labels) -> float:
    """Share of samples whose oracle class (first glyph) equals the requested class."""
    return float((np.asarray(glyphs)[:, 0] == np.asarray(labels)).mean())


@register("coverage", needs=("glyphs", "labels"))
def coverage(fake, ref=None, **_) -> dict[str, float]:
    c = mode_coverage(fake.glyphs)
    out = {"coverage_modes": c["modes"], "coverage_kl": c["kl"]}
    if fake.labels is not None:
        out["oracle_accuracy"] = class_accuracy(fake.glyphs, fake.labels)
    return out
