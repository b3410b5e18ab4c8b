"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

Splits are contiguous runs of the global sample order (as torch-fidelity and stylegan2-ada do
without shuffling), so the score does not depend on how ranks divided the samples.
"""
from __future__ import annotations

import numpy as np

from pipeline.evaluation.metrics import register


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """probs: [N, C] class probabilities p(y|x) -> (mean, std) of the per-split scores."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise ValueError(f"need [N, C] probabilities with N >= splits={splits}, got shape {p.shape}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        # 0 log 0 = 0: one-hot rows are valid inputs.
        kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1)) - np.log(np.where(py > 0, py, 1))), 0)
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


@register("is", needs=("logits",))
def is_metric(fake, ref=None, *, is_splits: int = 10, **_) -> dict[str, float]:
    mean, std = inception_score(softmax(fake.logits), is_splits)
    return {"is_mean": mean, "is_std": std}
