"""How a score was measured: what to evaluate (EvalConfig) and what was done (Protocol).

A score without its protocol cannot be compared with another, so every logged score carries the
Protocol's tags: extractor and its weights' sha256, image counts, resize, the reference
statistics' source and content sha256, truncation and EMA.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Suggested `eval:` section of the run config (fields as stylegan2-ada documents its own)."""
    every: int = 0                       # G steps between in-loop evaluations; 0 = off
    metrics: tuple[str, ...] = ("fid", "kid", "coverage")   # names from metrics.list_metrics()
    n_fake: int = 10000                  # generated images per evaluation
    n_real: int | None = None            # real images for the reference; None = the whole dataset
    extractor: str = "ganforge-small-shapestack"   # or "inception-v3-tf-2015-12-05", or a weights path
    inception_weights: str | None = None  # file, folder or URL of the FID Inception weights; None = caches
    batch_size: int = 64                 # images per generator/extractor batch, per rank
    seed: int = 0                        # latents of sample i are a function of (seed, i)
    truncation: float | None = None      # |z| bound of the truncated normal; None = plain N(0, I)
    ema: bool = True                     # evaluate G_ema (True) or the raw G
    kid_subsets: int = 100               # KID: subsets averaged ...
    kid_subset_size: int = 1000          # ... of this many samples from each set
    pr_k: int = 3                        # precision/recall: k of the k-NN radius
    is_splits: int = 10                  # Inception Score: splits for mean and std
    best_metric: str = "fid"             # result key that picks the best checkpoint (lower is better)

    def __post_init__(self):
        from pipeline.evaluation.metrics import list_metrics
        unknown = [m for m in self.metrics if m not in list_metrics()]
        if unknown:
            raise ValueError(f"metrics: unknown {unknown} (known: {', '.join(list_metrics())})")
        if self.every < 0:
            raise ValueError("every: must be >= 0")
        if self.n_fake < 2 or (self.n_real is not None and self.n_real < 2):
            raise ValueError("n_fake/n_real: need at least 2 images")
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if self.truncation is not None and self.truncation <= 0:
            raise ValueError("truncation: must be > 0 (or null for none)")

    def metric_options(self) -> dict:
        """Keyword options for metrics.compute()."""
        return {"kid_subsets": self.kid_subsets, "kid_subset_size": self.kid_subset_size,
                "pr_k": self.pr_k, "is_splits": self.is_splits, "seed": self.seed}


@dataclass(frozen=True, kw_only=True)
class Protocol:
    extractor: str
    extractor_sha256: str
    standard: bool                       # True only for the FID InceptionV3 with its real weights
    n_real: int
    n_fake: int
    resize: str                          # e.g. "bilinear-299" (filter-size)
    ref_stats_source: str
    ref_stats_sha256: str
    truncation: float | None
    ema: bool
    seed: int = 0

    @staticmethod
    def of(extractor, ref, *, n_fake: int, truncation: float | None, ema: bool, seed: int = 0) -> Protocol:
        """extractor and ref may be None (oracle-only metrics such as coverage)."""
        return Protocol(extractor=extractor.name if extractor else "none",
                        extractor_sha256=extractor.sha256 if extractor else "none",
                        standard=bool(extractor and extractor.standard), n_real=ref.n if ref else 0,
                        n_fake=n_fake, resize=extractor.resize if extractor else "none",
                        ref_stats_source=ref.source if ref else "none",
                        ref_stats_sha256=ref.sha256 if ref else "none",
                        truncation=truncation, ema=ema, seed=seed)

    def tags(self) -> dict[str, str]:
        """MLflow tags: eval.extractor, eval.extractor_sha256, eval.standard, eval.n_real, eval.n_fake,
        eval.resize, eval.ref_stats_source, eval.ref_stats_sha256, eval.truncation, eval.ema, eval.seed."""
        return {f"eval.{k}": ("none" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in asdict(self).items()}


def log_scores(client, run_id: str, results: dict, protocol: Protocol, *, step: int,
               ref_path=None, prefix: str = "eval") -> dict[str, float]:
    """Log results (metrics.compute_all output) to an MLflow run as metrics at `step`, with the
    protocol as tags, and the reference statistics file as an artifact under refstats/ (once).
    Returns the metric keys logged. Rank 0 only."""
    import time

    from mlflow.entities import Metric, RunTag

    from pipeline.evaluation.metrics import metric_keys

    keys = metric_keys(results, protocol.extractor, protocol.standard, prefix)
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in keys.items()],
                     tags=[RunTag(k, v) for k, v in protocol.tags().items()])
    if ref_path is not None:
        from pathlib import Path
        have = {f.path for f in client.list_artifacts(run_id, "refstats")}
        if f"refstats/{Path(ref_path).name}" not in have:
            client.log_artifact(run_id, str(ref_path), artifact_path="refstats")
    return keys
