"""`train_loop_per_worker`: the one place that talks to ray.train.

Every rank runs the same fixed schedule of steps, so every rank calls `ray.train.report` the
same number of times (it is a barrier) and DDP never waits on a rank that ran out of data.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

import models
from pipeline.engine import checkpoint, progressive, steps
from pipeline.tracking import storage
from pipeline import config as C
from pipeline.data import RankStream, to_float
from pipeline.evaluation.in_loop import InLoopEval
from pipeline.tracking.runs import RankZeroLogger

log = logging.getLogger("ganforge.train")


class InjectedFailure(RuntimeError):
    """Raised by train.inject_failure_at to exercise recovery."""


def _optimizers(G, D, o: C.OptimConfig, device):
    # fused Adam is the fast path on CUDA; foreach is the fast path on CPU.
    kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return (torch.optim.Adam(G.parameters(), lr=o.g_lr, betas=o.betas, **kw),
            torch.optim.Adam(D.parameters(), lr=o.d_lr, betas=o.betas, **kw))


def _autocast(cfg: C.Config, device):
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else None


def _channels_last(cfg: C.Config, device) -> bool:
    """train.memory_format; auto = NHWC on a GPU under bf16 (cuDNN's fast path)."""
    fmt = cfg.train.memory_format
    return fmt == "channels_last" or (fmt == "auto" and device.type == "cuda"
                                      and cfg.train.precision != "fp32")


def _fixed_latents(cfg: C.Config, G, device):
    """The same latents and classes for every grid of every run with this seed."""
    g = torch.Generator().manual_seed(cfg.train.seed + 12345)
    n = cfg.tracking.samples
    z = torch.randn(n, G.z_dim, generator=g).to(device)
    y = (torch.arange(n) % G.num_classes).to(device) if G.num_classes else None
    return z, y


def _reduce(stats: dict[str, torch.Tensor], n: int, world: int) -> dict[str, float]:
    """Mean over the window and over ranks, in one collective and one host sync."""
    keys = sorted(stats)
    vec = torch.stack([stats[k].float().cpu() for k in keys]) / max(n, 1)
    if world > 1:
        dist.all_reduce(vec)
        vec /= world
    return dict(zip(keys, vec.tolist()))


def _sum_counts(counts: list[int], world: int) -> list[int]:
    t = torch.tensor(counts, dtype=torch.int64)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _restore(state: dict, G, D, G_ema, opt_g, opt_d) -> None:
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    G_ema.load_state_dict(state["G_ema"])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])


def _maybe_fail(cfg: C.Config, step: int, rank: int, world: int, marker_dir: str) -> None:
    """Raise once (a marker file remembers) so the restarted group can get past this step."""
    at = cfg.train.inject_failure_at
    if at is None or step != at or rank != min(1, world - 1):
        return
    marker = storage.join(marker_dir, f".injected_failure_{at}")
    if storage.exists(marker):
        return
    storage.write_text(marker, "")
    raise InjectedFailure(f"train.inject_failure_at={at}: rank {rank} fails on purpose")


def train_loop_per_worker(loop: dict) -> dict:
    cfg = C.from_dict(loop["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed * 1000 + rank)   # per-rank noise; overwritten on resume

    nets = models.build(cfg.model)
    # NHWC weights and activations: cuDNN's fast path for bf16 convolutions (train.memory_format).
    nhwc = _channels_last(cfg, device)
    fmt = torch.channels_last if nhwc else torch.preserve_format
    G, D = nets["G"].to(device, memory_format=fmt), nets["D"].to(device, memory_format=fmt)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g, opt_d = _optimizers(G, D, cfg.optim, device)

    start, position, images_seen = 0, None, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None or loop.get("resume_from"):
        with (ckpt.as_directory() if ckpt else _nullpath(loop["resume_from"])) as d:
            state = checkpoint.load(d, map_location=device)
        _restore(state, G, D, G_ema, opt_g, opt_d)
        start = int(state["step"])
        # Real images shown to D over all workers; older checkpoints lack it: estimate.
        images_seen = int(state.get("images_seen", start * cfg.optim.d_steps_per_g
                                    * cfg.train.batch_size * world))
        positions = state.get("data_positions") or []
        position = positions[rank] if len(positions) == world else None
        rngs = state.get("rng") or []
        if len(rngs) == world:
            checkpoint.set_rng_state(rngs[rank])
        if rank == 0:
            print(f"[ganforge] resumed at step {start} of {cfg.train.steps}", flush=True)

    # No buffer sync per forward: D runs twice (real, fake) per backward and rank 0's BN/SN
    # buffers would be copied in place between the two forwards. Buffers still sync at init.
    ddp = {"forward_sync_buffers": False}
    wrap = lambda m: ray.train.torch.prepare_model(m, parallel_strategy_kwargs=ddp)  # noqa: E731
    G_inner, D_inner = G, D
    # ProGAN: the stage follows images_seen; set it before wrapping so DDP sees its parameters.
    grow = progressive.Growth(cfg, (G, D, G_ema), (opt_g, opt_d)) if progressive.applies(cfg) else None
    if grow is not None:
        grow.advance(images_seen)
    G, D = wrap(G_inner), wrap(D_inner)
    batch_size = grow.batch_size if grow else cfg.train.batch_size

    def open_stream(batch_size, position):
        return RankStream(loop["shard_urls"], rank=rank, world_size=world,
                          batch_size=batch_size, resolution=cfg.data.resolution,
                          loader_workers=cfg.data.loader_workers, seed=cfg.train.seed,
                          shuffle_buffer=cfg.data.shuffle_buffer, bad_samples=cfg.data.bad_samples,
                          position=position, counts=loop.get("shard_counts"))

    stream = open_stream(batch_size, position)
    data_position = position
    phase = steps.Phase(loss=cfg.loss, z_dim=G_inner.z_dim, conditional=G_inner.num_classes > 0,
                        autocast=_autocast(cfg, device))
    logger = RankZeroLogger(loop["tracking_uri"], loop["mlflow_run_id"]) if rank == 0 else None
    fixed_z, fixed_y = _fixed_latents(cfg, G_inner, device)
    bar = _Progress(cfg.train.steps, start) if rank == 0 else None
    evaluator = (InLoopEval(cfg, loop["eval"], rank=rank, world=world, device=device,
                            gather=lambda obj: _gather(obj, world)) if cfg.eval.every else None)
    best = _best_so_far(loop["run_dir"])

    acc: dict[str, torch.Tensor] = {}
    n_acc, skipped, converted, bad_keys = 0, 0, 0, []
    t0, imgs0 = time.perf_counter(), 0
    last_grid = None
    total = cfg.train.steps
    try:
        for step in range(start + 1, total + 1):
            if grow is not None:
                rewrap, rebatch = grow.advance(images_seen)
                if rewrap:
                    G, D = wrap(G_inner), wrap(D_inner)   # see pipeline/progressive.py for why
                if rebatch:      # the new stream continues after the last sample this rank used
                    stream.close()
                    batch_size = grow.batch_size
                    stream = open_stream(batch_size, data_position)
            for _ in range(cfg.optim.d_steps_per_g):
                batch = next(stream)
                data_position = batch.position
                skipped += batch.n_skipped
                converted += batch.n_converted
                bad_keys.extend(batch.bad_keys)
                real = to_float(batch.images.to(device, non_blocking=True))
                if grow is not None:
                    real = grow.reals(real)
                y = batch.labels.to(device, non_blocking=True)
                if nhwc:
                    real = real.contiguous(memory_format=torch.channels_last)
                stats = steps.d_step(G, D, opt_d, real, y, phase)
                imgs0 += real.shape[0]
                images_seen += real.shape[0] * world    # every rank draws the same batch size
            stats.update(steps.g_step(G, D, opt_g, batch_size, y, phase, device))
            decay = cfg.optim.ema_decay if step > cfg.optim.ema_start else 0.0
            steps.ema_step(G_ema, G, decay)
            for k, v in stats.items():
                acc[k] = acc[k] + v if k in acc else v.clone()
            n_acc += 1
            _maybe_fail(cfg, step, rank, world, loop["run_dir"])

            last = step == total
            ckpt_due = step % cfg.train.checkpoint_every == 0 or last
            if not (step % cfg.train.log_every == 0 or ckpt_due):
                continue
            metrics = _reduce(acc, n_acc, world)
            dt = time.perf_counter() - t0
            skipped_all, converted_all, imgs_all = _sum_counts([skipped, converted, imgs0], world)
            metrics.update(step=step, images_per_s=imgs_all / max(dt, 1e-9),
                           skipped_samples=skipped_all, converted_samples=converted_all,
                           images_seen=images_seen, **(grow.metrics() if grow else {}))
            acc, n_acc, t0, imgs0 = {}, 0, time.perf_counter(), 0
            if bad_keys:
                log.warning("rank %d skipped bad samples, first: %s", rank, bad_keys[:5])
                bad_keys = []
            positions = _gather(data_position, world)
            eval_due = evaluator is not None and evaluator.due(step, last)
            rngs = _gather(checkpoint.rng_state(), world) if ckpt_due or eval_due else None
            state = lambda: {"step": step, "images_seen": images_seen,  # noqa: E731
                             "G": G_inner.state_dict(), "D": D_inner.state_dict(),
                             "G_ema": G_ema.state_dict(),
                             "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                             "data_positions": positions, "rng": rngs, "config": loop["config"]}
            scores = {}
            if eval_due:   # log_scores logs these to MLflow with their protocol tags
                scores = evaluator.run(G_ema if cfg.eval.ema else G_inner, step,
                                       logger and logger.client, loop["mlflow_run_id"])
                best = _keep_best(scores, best, cfg.eval.best_metric, state, loop["run_dir"]) if rank == 0 else best
            report_ckpt = None
            with tempfile.TemporaryDirectory() as td:
                if rank == 0:
                    logger.metrics({k: v for k, v in metrics.items() if k != "step"}, step)
                    if (cfg.train.sample_every and step % cfg.train.sample_every == 0) or last:
                        last_grid = _log_grid(logger, G_ema, fixed_z, fixed_y, step,
                                              cfg.data.resolution)
                    if ckpt_due:
                        checkpoint.save(state(), td, meta={"model": loop["config"]["model"]["name"],
                                                           "images_seen": images_seen,
                                                           **(grow.metrics() if grow else {})})
                        report_ckpt = ray.train.Checkpoint.from_directory(td)
                    if bar is not None:
                        bar.show(step, metrics)
                ray.train.report({**metrics, **scores}, checkpoint=report_ckpt)
    finally:
        stream.close()
        if bar is not None:
            bar.close()
    return {"step": total, "last_grid": last_grid}


def _best_so_far(run_dir: str) -> float:
    text = storage.read_text(storage.join(run_dir, "best_checkpoint", checkpoint.META))
    return float(json.loads(text).get("best_score", "inf")) if text else float("inf")


def _keep_best(scores: dict[str, float], best: float, metric: str, state, run_dir: str) -> float:
    """Rank 0: copy the full state to <run_dir>/best_checkpoint when `metric` improves (lower is
    better). Written beside and renamed over, so the best checkpoint is never half-written."""
    key = next((k for k in scores if k.split("/")[-1] == metric), None)
    if key is None or not scores[key] < best:
        return best
    meta = {"best_metric": key, "best_score": scores[key]}
    if storage.is_uri(run_dir):   # object stores cannot rename folders: meta.json goes up last
        with tempfile.TemporaryDirectory() as td:
            checkpoint.save(state(), td, meta=meta)
            storage.upload_dir(td, storage.join(run_dir, "best_checkpoint"), last=checkpoint.META)
        return scores[key]
    final = Path(run_dir) / "best_checkpoint"
    tmp = final.with_name(f".best_checkpoint.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.save(state(), tmp, meta=meta)
    old = final.with_name(f".best_checkpoint.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return scores[key]


def _log_grid(logger: RankZeroLogger, G_ema, z, y, step: int, size: int) -> str:
    with torch.no_grad():
        images = G_ema(z, y)
    if images.shape[-1] != size:   # a growing model's current stage: blocky pixels, full-size grid
        images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="nearest")
    return logger.grid(images.cpu(), step)


class _Progress:
    """Steps, losses, images/s and ETA on the driver's terminal (Ray's tqdm draws a worker's bar there)."""

    def __init__(self, total: int, start: int):
        from ray.experimental.tqdm_ray import tqdm
        self.bar, self.n = tqdm(total=total, desc="train", unit="step"), 0
        self.show(start, {})

    def show(self, step: int, m: dict) -> None:
        if m:
            self.bar.set_description(f"train loss_d={m.get('loss_d', 0):.3f} "
                                     f"loss_g={m.get('loss_g', 0):.3f} {m.get('images_per_s', 0):.0f} img/s")
        self.bar.update(step - self.n)
        self.n = step

    def close(self) -> None:
        self.bar.close()


class _nullpath:
    """`with` wrapper that yields a local checkpoint folder unchanged."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        return False
