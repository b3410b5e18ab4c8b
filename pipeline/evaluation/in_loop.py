"""In-loop evaluation: the glue between the training loop and pipeline.evaluation.metrics.

The driver prepares what is shared (extractor weights, cached reference statistics of the
shards) once, before Ray starts; every rank then generates and extracts its own slice of the
fake samples, and rank 0 combines, scores and logs with the protocol tags.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import config as C


def _extractor_weights(cfg: C.Config) -> str | None:
    """Path of the extractor weights every worker loads; fits the small extractor when missing."""
    from pipeline.evaluation.extractors import small

    e = cfg.eval
    data = small.data_for(e.extractor)
    if data is None:
        return e.inception_weights
    path = Path(e.inception_weights or small.default_path(data))
    if not path.is_file():
        print(f"[ganforge] fitting the offline feature extractor {small.NAMES[data]} -> {path}", flush=True)
        small.fit(out_path=path, data=data)
    return str(path)


def _needs_extractor(cfg: C.Config) -> bool:
    from pipeline.evaluation import metrics
    return any(metrics.get(m).uses_extractor for m in cfg.eval.metrics)


def prepare(cfg: C.Config, urls: list[str], manifest: dict | None, spec: str) -> dict:
    """Driver side. -> what train_loop_per_worker needs under loop["eval"]."""
    from pipeline.evaluation import metrics
    from pipeline.evaluation.extractors import load_extractor
    from pipeline.data import shard_counts
    from pipeline.evaluation.metrics import reference

    if not _needs_extractor(cfg):
        return {"weights": None, "ref_path": None}
    weights = _extractor_weights(cfg)
    ex = load_extractor(cfg.eval.extractor, weights=weights)
    counts = shard_counts(manifest)
    sha = manifest["sha256"] if manifest else spec
    ref = reference.reference_stats(
        reference.shard_batches(urls, cfg.data.resolution, batch_size=cfg.eval.batch_size,
                                stop=cfg.eval.n_real, counts=counts),
        ex, manifest_sha=sha, resolution=cfg.data.resolution, source=spec, limit=cfg.eval.n_real,
        keep=metrics.real_keep(cfg.eval.metrics))
    return {"weights": weights, "ref_path": str(ref.path)}


class InLoopEval:
    """Worker side: every rank calls `run` at the same steps; rank 0 gets the logged scores."""

    def __init__(self, cfg: C.Config, prepared: dict, *, rank: int, world: int, device, gather):
        from pipeline.evaluation.extractors import load_extractor
        from pipeline.evaluation.metrics import reference

        self.cfg, self.rank, self.world, self.gather = cfg, rank, world, gather
        self.ex = (load_extractor(cfg.eval.extractor, weights=prepared["weights"], device=device)
                   if _needs_extractor(cfg) else None)
        self.ref = reference.load(prepared["ref_path"]) if prepared.get("ref_path") else None
        self.oracle = None
        if "coverage" in cfg.eval.metrics:
            if cfg.data.shards is not None or cfg.data.builtin != "shapestack":
                raise C.ConfigError("eval.metrics: coverage needs the built-in shapestack data "
                                    "(its oracle labels the glyphs)")
            from pipeline.data.datasets.shapestack import oracle
            self.oracle = oracle

    def due(self, step: int, last: bool) -> bool:
        return bool(self.cfg.eval.every) and (step % self.cfg.eval.every == 0 or last)

    def score(self, G) -> dict:
        """This rank's share of cfg.eval.n_fake samples from G (a Generator), scored: {metric:
        {key: value}} on rank 0 (every rank must call it)."""
        from pipeline.evaluation.metrics import collect

        results, _ = collect.evaluate(G, list(self.cfg.eval.metrics), extractor=self.ex, ref=self.ref,
                                      cfg=self.cfg.eval, oracle=self.oracle, rank=self.rank,
                                      world=self.world, gather=self.gather)
        return results

    def run(self, family, nets, step: int, tracker=None) -> dict[str, float]:
        """Score `family.generate` over `nets`; rank 0 logs through `tracker.scores` (MLflow under
        Ray Train, files in the local context) and returns the logged keys."""
        from pipeline.evaluation.metrics.protocol import Protocol
        from pipeline.families.generator import Generator

        e = self.cfg.eval
        results = self.score(Generator.view(family, nets))
        if self.rank != 0:
            return {}
        protocol = Protocol.of(self.ex, self.ref, n_fake=e.n_fake, truncation=e.truncation,
                               ema=e.ema, seed=e.seed)
        return tracker.scores(results, protocol, step=step, ref_path=self.ref.path if self.ref else None)


def eval_loop_per_worker(loop: dict) -> dict | None:
    """A Ray Train worker that scores a fixed generator: each rank its slice of cfg.eval.n_fake
    samples, gathered on rank 0. loop: {"config": to_dict(cfg), "g_state": path of a G state
    dict, "eval": prepare(...)}. Returns the results on rank 0."""
    import ray.train
    import torch
    import torch.distributed as dist

    from pipeline import families
    from pipeline.families.generator import Generator

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = C.from_dict(loop["config"])
    fam = families.of(cfg)
    built = fam.build()
    G = Generator(fam, {n: built[n] for n in fam.sample_nets}, cfg)
    G.load_flat(torch.load(loop["g_state"], weights_only=True))

    def gather(obj):
        out = [None] * world
        dist.all_gather_object(out, obj)
        return out

    results = InLoopEval(cfg, loop["eval"], rank=rank, world=world, device="cpu", gather=gather).score(G)
    ray.train.report({"done": 1})
    return results
