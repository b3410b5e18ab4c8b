"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets (torch-fidelity's defaults:
100 subsets of 1000), with the std over subsets. Subsets are drawn from a seeded generator.
"""
from __future__ import annotations

import numpy as np

from pipeline.evaluation.metrics import register


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-sized sets x, y [m, d] under the cubic polynomial kernel."""
    m, d = x.shape
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))  # noqa: E731  mean over i != j
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def kernel_inception_distance(fake, real, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """-> (mean, std) of the unbiased MMD^2 over `subsets` random subsets of each set."""
    fake, real = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    m = min(len(fake), len(real), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(fake)} fake and {len(real)} real")
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased(fake[rng.choice(len(fake), m, replace=False)],
                          real[rng.choice(len(real), m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


@register("kid", needs=("features", "real_features"))
def kid(fake, ref, *, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0, **_) -> dict[str, float]:
    mean, std = kernel_inception_distance(fake.features, ref.features, kid_subsets, kid_subset_size, seed)
    return {"kid_mean": mean, "kid_std": std}
