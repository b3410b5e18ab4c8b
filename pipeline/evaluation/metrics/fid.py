"""Fréchet Inception Distance (Heusel et al. 2017) and its per-class form.

FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2). The last trace is computed without a
non-symmetric matrix square root: with factors S1 = F1 F1^T and S2 = F2 F2^T (from eigh),
tr sqrt(S1 S2) is the sum of the singular values of F1^T F2. Eigenvalues that are zero up to
rounding (N < D gives rank N - 1 covariances) are dropped first, so near-singular covariances cost
no accuracy and FID(x, x) comes out 0 to rounding, where scipy's sqrtm needs pytorch-fid's eps
offset and loses about half the digits.
"""
from __future__ import annotations

import numpy as np

from pipeline.evaluation.metrics import register


def _factor(s: np.ndarray) -> np.ndarray:
    """F with F F^T = s for symmetric PSD s, numerically-null directions dropped."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    keep = w > max(w.max(initial=0.0), 0.0) * len(w) * np.finfo(np.float64).eps
    return v[:, keep] * np.sqrt(w[keep])


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    cross = np.linalg.svd(_factor(s1).T @ _factor(s2), compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * cross)


@register("fid", needs=("real_stats",))
def fid(fake, ref, **_) -> dict[str, float]:
    return {"fid": frechet_distance(fake.stats.mean, fake.stats.cov, ref.mean, ref.sigma)}


@register("fid_per_class", needs=("features", "labels", "real_features"))
def fid_per_class(fake, ref, **_) -> dict[str, float]:
    """FID of each requested class against the real images carrying that label, and their mean."""
    from pipeline.evaluation.metrics.features import FeatureStats

    if fake.labels is None or ref.labels is None:
        raise ValueError("fid_per_class needs a class-conditional generator and labelled real data")
    out = {}
    for c in np.unique(fake.labels):
        f, r = fake.features[fake.labels == c], ref.features[ref.labels == c]
        if len(f) < 2 or len(r) < 2:
            continue
        a, b = FeatureStats.of(f), FeatureStats.of(r)
        out[f"fid_class_{int(c)}"] = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    if out:
        out["fid_per_class_mean"] = float(np.mean(list(out.values())))
    return out
