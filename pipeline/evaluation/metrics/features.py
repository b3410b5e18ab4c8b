"""Feature statistics that ranks compute on their own slice and rank 0 combines exactly.

A rank's `Partial` holds the float64 running mean and centred scatter of its features (merged
with the pairwise update of Chan, Golub & LeVeque 1979, which stays accurate where "sum of outer
products minus n mu mu^T" cancels badly) and, when a metric needs them, the raw per-sample arrays.
`combine` orders partials by their first global sample index, so the result does not depend on
how samples were split across ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FeatureStats:
    n: int = 0
    mean: np.ndarray | None = None      # float64 [D]
    m2: np.ndarray | None = None        # float64 [D, D]: sum over samples of (x - mean)(x - mean)^T

    @staticmethod
    def of(x) -> FeatureStats:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {x.shape}")
        if len(x) == 0:
            return FeatureStats()
        mean = x.mean(0)
        c = x - mean
        return FeatureStats(len(x), mean, c.T @ c)

    def merge(self, other: FeatureStats) -> FeatureStats:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"feature sizes differ: {self.mean.shape[0]} vs {other.mean.shape[0]}")
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return FeatureStats(n, mean, m2)

    def update(self, x) -> FeatureStats:
        return self.merge(FeatureStats.of(x))

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1, as np.cov and pytorch-fid do)."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 samples, got {self.n}")
        return self.m2 / (self.n - 1)


# Per-sample arrays a Partial may carry; metrics name the ones they need (see metrics.needs()).
ARRAYS = ("features", "logits", "labels", "glyphs")


@dataclass
class Partial:
    """One rank's share: samples [start, start + n) of the global index."""
    start: int = 0
    n: int = 0
    stats: FeatureStats = field(default_factory=FeatureStats)   # of the features; empty without an extractor
    features: np.ndarray | None = None   # float32 [n, D]
    logits: np.ndarray | None = None     # float32 [n, C] class logits of the extractor (IS)
    labels: np.ndarray | None = None     # int64 [n]: requested class (fake) or data label (real)
    glyphs: np.ndarray | None = None     # int64 [n, 3]: oracle reading (shapestack coverage)
    # Batches added since the last flush(): concatenated once, not once per batch.
    _chunks: dict = field(default_factory=dict, repr=False, compare=False)

    def add(self, n: int, features=None, *, keep: set[str] = frozenset(), **arrays) -> None:
        """Append one batch of n samples. features [n, D] (None without an extractor) always
        update the stats; the per-sample arrays (features, logits, labels, glyphs) named in
        `keep` are also stored."""
        if features is not None:
            features = np.asarray(features, dtype=np.float32)
            self.stats = self.stats.merge(FeatureStats.of(features))
        self.n += n
        for k, v in {"features": features, **arrays}.items():
            if k not in ARRAYS:
                raise KeyError(f"unknown per-sample array {k!r} (known: {', '.join(ARRAYS)})")
            if k not in keep:
                continue
            if v is None:
                raise ValueError(f"asked to keep {k} but this batch has none")
            v = np.asarray(v)
            if len(v) != n:
                raise ValueError(f"{k}: {len(v)} rows for a batch of {n} samples")
            self._chunks.setdefault(k, [] if getattr(self, k) is None else [getattr(self, k)]).append(v)

    def flush(self) -> Partial:
        """Concatenate added batches into the array fields; call before reading or sending them."""
        for k, chunks in self._chunks.items():
            setattr(self, k, np.concatenate(chunks))
        self._chunks = {}
        return self


def combine(partials: list[Partial]) -> Partial:
    """Gathered partials -> the partial one process would have computed over all samples."""
    parts = sorted((p.flush() for p in partials if p.n), key=lambda p: p.start)
    if not parts:
        return Partial()
    for a, b in zip(parts, parts[1:]):
        if a.start + a.n != b.start:
            raise ValueError(f"partials do not tile the sample range: [{a.start}, {a.start + a.n}) "
                             f"is followed by one starting at {b.start}")
    out = Partial(start=parts[0].start, n=sum(p.n for p in parts))
    for p in parts:
        out.stats = out.stats.merge(p.stats)
    for k in ARRAYS:
        arrays = [getattr(p, k) for p in parts]
        if all(a is not None for a in arrays):
            setattr(out, k, np.concatenate(arrays))
    return out


def rank_slice(n: int, rank: int, world: int) -> range:
    """Contiguous, balanced share of n global sample indices for `rank` of `world`."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} not in [0, {world})")
    return range(n * rank // world, n * (rank + 1) // world)
