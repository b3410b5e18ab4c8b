"""The training engine: one loop for every family, driven by a context (Ray Train or local).

Once per step: apply the family's growth change if any; for each phase due this step (and each
of its repeats) draw its batch, zero its optimizer, run the family's loss under autocast,
backward, step; update the EMAs. On the report schedule: reduce every phase run's stats across
ranks, checkpoint, grid, evaluate. Every rank runs the same fixed schedule of steps, so every
rank reports the same number of times (a barrier under Ray Train) and DDP never waits on a rank
that ran out of data. Nothing here imports ray or mlflow: the context brings them.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
import traceback
from collections.abc import Iterator

import torch

from pipeline import config as C
from pipeline import families
from pipeline.data.fields import Image
from pipeline.engine import best as B
from pipeline.engine import checkpoint, ema
from pipeline.families.spec import Ctx, eager
from pipeline.tracking import storage

log = logging.getLogger("ganforge.train")


class InjectedFailure(RuntimeError):
    """Raised by train.inject_failure_at to exercise recovery."""


def autocast(cfg: C.Config, device):
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else None


def channels_last(cfg: C.Config, device) -> bool:
    """train.memory_format; auto = NHWC on a GPU under bf16 (cuDNN's fast path)."""
    fmt = cfg.train.memory_format
    return fmt == "channels_last" or (fmt == "auto" and device.type == "cuda"
                                      and cfg.train.precision != "fp32")


def compile_mode(cfg: C.Config, device) -> str | None:
    """train.compile as a torch.compile mode, or None (eager); auto = "default" on a GPU only."""
    c = cfg.train.compile
    if c == "auto":
        return "default" if device.type == "cuda" else None
    return "default" if c is True else c or None


def wrap(ctx, nets: dict, mode: str | None) -> dict:
    """What the phases call: each trained network DDP-wrapped by the context, then compiled
    (PyTorch's order for DDP: compiling the wrapper lets Dynamo split graphs at DDP's buckets).
    Frozen networks stay as they are. Static shapes: the engine's batches have one shape per
    stage, and a symbolic batch size only costs speed."""
    out = {k: ctx.wrap(m) for k, m in nets.items()}
    if mode is None:
        return out
    return {k: torch.compile(m, mode=mode, dynamic=False) if any(p.requires_grad for p in m.parameters())
            else m for k, m in out.items()}


def compiler_failure(e: BaseException) -> bool:
    """Whether `e` came out of torch.compile (Dynamo, inductor or the code inductor generated)
    rather than out of the model: such errors are PyTorch's bugs, and eager mode avoids them."""
    from torch._dynamo.exc import TorchDynamoException

    if isinstance(e, TorchDynamoException):
        return True
    return any("/torch/_inductor/" in f.filename or "torchinductor_" in f.filename
               for f in traceback.extract_tb(e.__traceback__))


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


class Stats:
    """Sums and counts of every phase run's stats since the last report (no host sync)."""

    def __init__(self):
        self.sum: dict[str, torch.Tensor] = {}
        self.n: dict[str, int] = {}

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            v = v.detach().float()
            self.sum[k] = self.sum[k] + v if k in self.sum else v.clone()
            self.n[k] = self.n.get(k, 0) + 1

    def reduce(self, ctx) -> dict[str, float]:
        """Mean over the window and over ranks, in one collective and one host sync."""
        keys = sorted(self.sum)
        if not keys:
            return {}
        vec = torch.stack([self.sum[k].cpu() for k in keys] +
                          [torch.tensor(float(self.n[k])) for k in keys])
        vec = ctx.all_sum(vec)
        return {k: (vec[i] / vec[len(keys) + i].clamp(min=1)).item() for i, k in enumerate(keys)}


class _Data:
    """The rank's stream and the counters the reports and checkpoints need."""

    def __init__(self, fam, cfg, ctx, data: dict, device, nhwc: bool, position):
        self.fam, self.cfg, self.ctx, self.data, self.device, self.nhwc = fam, cfg, ctx, data, device, nhwc
        self.image_fields = {k for k, f in fam.fields.items() if isinstance(f, Image)}
        self.position, self.skipped, self.converted, self.bad_keys, self.images = position, 0, 0, [], 0
        self.retries, self.skipped_shards = 0, 0
        self.stream = None
        self.open(fam.batch_size())

    def open(self, batch_size: int) -> None:
        """(Re)open the stream; it continues after the last sample this rank used."""
        from pipeline.data import RankStream, to_float
        from pipeline.data.netio import Budget

        self.to_float = to_float
        if self.stream is not None:
            self.stream.close()
        d = self.cfg.data
        self.stream = RankStream(self.data["urls"], rank=self.ctx.rank, world_size=self.ctx.world,
                                 batch_size=batch_size, resolution=d.resolution,
                                 loader_workers=d.loader_workers, seed=self.cfg.train.seed,
                                 shuffle_buffer=d.shuffle_buffer, bad_samples=d.bad_samples,
                                 position=self.position, counts=self.data.get("counts"),
                                 fields=self.fam.fields,
                                 budget=Budget(connect_timeout_s=d.connect_timeout_s,
                                               stall_timeout_s=d.stall_timeout_s, retries=d.retries,
                                               retry_backoff_s=d.retry_backoff_s))

    def next(self) -> dict:
        b = next(self.stream)
        self.position = b.position
        self.skipped += b.n_skipped
        self.converted += b.n_converted
        self.retries += b.n_retries
        self.skipped_shards += b.n_skipped_shards
        self.bad_keys.extend(b.bad_keys)
        out = {}
        for k, v in b.fields.items():
            if k in self.image_fields:
                v = self.to_float(v.to(self.device, non_blocking=True))
                if self.nhwc:
                    v = v.contiguous(memory_format=torch.channels_last)
            elif isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
            out[k] = v
        self.images += len(next(iter(b.fields.values())))
        return out

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


@contextlib.contextmanager
def _training_only(nets: dict, opt) -> Iterator[None]:
    """Freeze, for one phase, every network that the phase's optimizer does not step.

    The phase's own optimizer is zeroed before its backward, so gradients that reach other
    networks were always thrown away; computing them costs the weight-gradient half of those
    networks' backward (D's in a G phase), and under DDP an all-reduce of them too. A frozen
    network still passes gradients to its inputs (G's images through D). Its forward runs under
    DDP's no_sync, so the reducer does not wait for gradients that will not come. A network with
    only some of its parameters in the optimizer is left as it is (DDP's reducer expects all or none)."""
    stepped = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = []
    with contextlib.ExitStack() as stack:
        for m in nets.values():
            params = [p for p in m.parameters() if p.requires_grad]
            if not params or any(id(p) in stepped for p in params):
                continue
            for p in params:
                p.requires_grad_(False)
            frozen += params
            ddp = eager(m)          # wrap() compiles the DDP wrapper, so look under torch.compile's
            if isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
                stack.enter_context(ddp.no_sync())
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)


def run_phase(fam, phase, nets, opts, batch: dict, ctx: Ctx) -> dict:
    """One unit of work: zero the phase's optimizer, the family's loss, backward, step."""
    ctx.phase = phase
    opt = opts[phase.optimizer]
    with _training_only(nets, opt):
        loss, stats = fam.loss(phase, nets, batch, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
    if ctx.lr_scale == 1.0:
        opt.step()
        return stats
    # The decay scales the lr for this step only, so whatever the family keeps in the groups
    # (ProGAN's stage lr, StyleGAN2's lazy correction) and the checkpointed optimizer state stay
    # as they are, and a resumed run decays exactly as an unbroken one.
    lrs = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] *= ctx.lr_scale
    opt.step()
    for g, lr in zip(opt.param_groups, lrs):
        g["lr"] = lr
    return stats


def train_step(fam, phases, wrapped, opts, emas, nets, next_batch, lctx: Ctx, stats: Stats,
               ema_decay) -> tuple[int, dict | None]:
    """One engine step at lctx.step: every phase due (each repeat on a new batch where the phase
    asks for one), then the EMA updates at ema_decay(images drawn in this step).
    -> (real images drawn on this rank, the last batch). The loop and the GPU benchmark run this."""
    batch, drawn = None, 0
    for ph in phases:
        if not ph.due(lctx.step):
            continue
        for _ in range(ph.repeat):
            if ph.new_batch or batch is None:
                batch = next_batch()
                drawn += len(next(iter(batch.values())))
            stats.add(run_phase(fam, ph, wrapped, opts, batch, lctx))
    decay = ema_decay(drawn)
    for k, m in emas.items():
        ema.update(m, nets[k], decay)
    return drawn, batch


def build(cfg: C.Config, device, nhwc: bool = False):
    """The family, its networks on `device`, their EMA copies and the optimizers."""
    fam = families.of(cfg)
    fmt = torch.channels_last if nhwc else torch.preserve_format
    nets = {k: m.to(device, memory_format=fmt) for k, m in fam.build().items()}
    emas = {k: copy.deepcopy(nets[k]).eval().requires_grad_(False) for k in fam.ema}
    return fam, nets, emas, fam.optimizers(nets, device)


def run(cfg: C.Config, ctx, data: dict, eval_prepared: dict | None = None) -> dict:
    """Train `cfg` on this rank. data: {"urls": shard URLs, "counts": samples per URL or None}.
    Returns {"step", "last_grid"}."""
    device, rank, world = ctx.device, ctx.rank, ctx.world
    torch.manual_seed(cfg.train.seed * 1000 + rank)   # per-rank noise; overwritten on resume
    nhwc = channels_last(cfg, device)
    fam, nets, emas, opts = build(cfg, device, nhwc)
    phases = fam.phases()
    config_dict = C.to_dict(cfg)

    start, position, images_seen, rng = 0, None, 0, None
    with ctx.restore() as state:
        if state is not None:
            state = checkpoint.unpack(state)
            for k, m in nets.items():
                m.load_state_dict(state["nets"][k])
            for k, m in emas.items():
                m.load_state_dict(state["ema"][k])
            for k, o in opts.items():
                o.load_state_dict(state["optim"][k])
            fam.load_state(state.get("family") or {})
            start = int(state["step"])
            # Real images shown to D over all workers; older checkpoints lack it: estimate.
            images_seen = int(state.get("images_seen", start * cfg.optim.d_steps_per_g
                                        * cfg.train.batch_size * world))
            positions = state.get("data_positions") or []
            position = positions[rank] if len(positions) == world else None
            rngs = state.get("rng") or []
            rng = rngs[rank] if len(rngs) == world else None
            if rank == 0:
                ctx.note(f"resumed at step {start} of {cfg.train.steps}")

    # Growth sets the stage before wrapping, so DDP sees the stage's parameters.
    fam.on_progress(images_seen, nets, emas, opts)
    mode = compile_mode(cfg, device)
    if mode is not None and rank == 0:
        ctx.note(f"compiling {', '.join(nets)} (torch.compile {mode}): the first steps take longer")
    wrapped = wrap(ctx, nets, mode)
    stream = _Data(fam, cfg, ctx, data, device, nhwc, position)
    lctx = Ctx(step=start, device=device, autocast=autocast(cfg, device))
    tracker = ctx.tracker if rank == 0 else None
    bar = ctx.progress(cfg.train.steps, start) if rank == 0 else None
    evaluator = None
    if cfg.eval.every:
        from pipeline.evaluation.in_loop import InLoopEval
        evaluator = InLoopEval(cfg, eval_prepared, rank=rank, world=world, device=device, gather=ctx.gather)
    best = B.best_so_far(ctx.run_dir)
    grid_seed = cfg.train.seed + 12345

    stats, t0, last_grid, total = Stats(), time.perf_counter(), None, cfg.train.steps
    if rng is not None:
        # Restored last, right before the first step: opening the data stream draws a DataLoader
        # base seed from the torch RNG, and a state restored before it left every later draw
        # (noise, mixing, dropout) one place off, so a resumed run diverged from an unbroken one.
        checkpoint.set_rng_state(rng)
    try:
        for step in range(start + 1, total + 1):
            change = fam.on_progress(images_seen, nets, emas, opts)
            if change is not None:
                if change.rewrap:        # see pipeline/families/progan.py for why
                    if mode is not None:
                        # The old stage's graphs would only count against Dynamo's recompile
                        # limit (8 per function: ProGAN-256 has 13 stages), then run eagerly.
                        torch._dynamo.reset()
                    wrapped = wrap(ctx, nets, mode)
                if change.batch_size:
                    stream.open(change.batch_size)
            lctx.step, o = step, cfg.optim
            lctx.lr_scale = o.lr_scale(step, total)
            decay = lambda drawn: ema.decay_at(  # noqa: E731
                o.ema_decay, o.ema_start, o.ema_rampup, step, images_seen + drawn * world,
                cfg.train.batch_size * world)
            try:
                drawn, batch = train_step(fam, phases, wrapped, opts, emas, nets, stream.next, lctx, stats, decay)
            except Exception as e:
                if mode is None or not compiler_failure(e):
                    raise
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                if cfg.train.compile != "auto":
                    raise RuntimeError(f"torch.compile ({mode}) failed at step {step}: {first}. This is "
                                       "PyTorch's compiler, not the model: train.compile=off trains "
                                       "eagerly") from e
                # auto promises speed where compile works, never a crash where eager works. Seen on
                # an H200 (torch 2.11, pacgan32, NHWC): inductor's convolution_backward expected
                # channels_last strides for a weight gradient that cuDNN returned contiguous
                # (pytorch#171622), an AssertionError at the first G step.
                log.warning("rank %d: torch.compile failed at step %d (%s); training on eagerly", rank, step, first)
                if rank == 0:
                    ctx.note(f"torch.compile failed at step {step} ({first}); training on eagerly "
                             "(train.compile=off skips compiling)")
                torch._dynamo.reset()
                mode = None
                wrapped = wrap(ctx, nets, None)
                # The step again, eagerly: a phase that stepped before the failure steps twice.
                drawn, batch = train_step(fam, phases, wrapped, opts, emas, nets, stream.next, lctx, stats, decay)
            images_seen += drawn * world          # the same batch on every rank
            _maybe_fail(cfg, step, rank, world, ctx.run_dir)

            last = step == total
            ckpt_due = step % cfg.train.checkpoint_every == 0 or last
            if not (step % cfg.train.log_every == 0 or ckpt_due):
                continue
            metrics = stats.reduce(ctx)
            dt = time.perf_counter() - t0
            skipped, converted, imgs, shards, retries = ctx.all_sum(torch.tensor(
                [stream.skipped, stream.converted, stream.images, stream.skipped_shards, stream.retries],
                dtype=torch.int64)).tolist()
            fam.after_log(metrics, imgs)   # every rank, same numbers: ADA's p stays rank-identical
            metrics.update(step=step, images_per_s=imgs / max(dt, 1e-9), skipped_samples=skipped,
                           converted_samples=converted, skipped_shards=shards, shard_retries=retries,
                           images_seen=images_seen, **fam.metrics())
            if cfg.optim.lr_decay_from is not None:
                metrics["lr_scale"] = lctx.lr_scale
            stats, t0, stream.images = Stats(), time.perf_counter(), 0
            if stream.bad_keys:
                log.warning("rank %d skipped bad samples, first: %s", rank, stream.bad_keys[:5])
                stream.bad_keys = []
            positions = ctx.gather(stream.position)
            eval_due = evaluator is not None and evaluator.due(step, last)
            grid_due = rank == 0 and (bool(cfg.train.sample_every and step % cfg.train.sample_every == 0) or last)
            averaged = {k: emas.get(k, nets[k]) for k in fam.sample_nets}   # what the grid and the standing pass draw
            if cfg.optim.ema_bn_samples and (ckpt_due or eval_due or grid_due):
                # The next update() copies the live BN buffers back: these serve this step only.
                ema.standing_stats(fam, averaged, emas, cfg.optim.ema_bn_samples, seed=cfg.train.seed)
            rngs = ctx.gather(checkpoint.rng_state()) if ckpt_due or eval_due else None
            state = lambda: checkpoint.pack(  # noqa: E731
                step=step, images_seen=images_seen, nets=nets, emas=emas, opts=opts,
                family_state=fam.state(), data_positions=positions, rng=rngs, config=config_dict)
            scores = {}
            if eval_due:
                sample = emas if cfg.eval.ema else nets
                scores = evaluator.run(fam, {k: sample.get(k, nets[k]) for k in fam.sample_nets},
                                       step, tracker)
                if rank == 0:
                    best = B.keep_best(scores, best, cfg.eval.best_metric, state, ctx.run_dir)
            with tempfile.TemporaryDirectory() as td:
                ckpt_dir = None
                if rank == 0:
                    tracker.metrics({k: v for k, v in metrics.items() if k != "step"}, step)
                    if grid_due:
                        last_grid = _grid(tracker, fam, averaged, step, cfg, grid_seed, batch)
                    if ckpt_due:
                        checkpoint.save(state(), td, meta={"model": config_dict["model"]["name"],
                                                           "images_seen": images_seen, **fam.metrics()})
                        ckpt_dir = td
                    if bar is not None:
                        bar.show(step, metrics)
                ctx.report({**metrics, **scores}, ckpt_dir)
    finally:
        stream.close()
        if bar is not None:
            bar.close()
    return {"step": total, "last_grid": last_grid}


def _grid(tracker, fam, sample_nets, step: int, cfg: C.Config, seed: int, batch: dict) -> str:
    images, nrow = fam.grid(sample_nets, cfg.tracking.samples, seed, batch)
    size = cfg.data.resolution
    if images.shape[-1] != size:   # a growing model's current stage: blocky pixels, full-size grid
        images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="nearest")
    return tracker.grid(images.cpu(), step, nrow)
