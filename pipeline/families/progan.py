"""ProGAN: the direct GAN's losses on progressively grown networks.

The stage is a pure function of `images_seen` (real images shown to D, summed over all workers;
`models.progan.progan_schedule`), so it needs no state of its own: a checkpoint that records
images_seen resumes in the same level and at the same alpha. Before every step the engine calls
`on_progress`, whose `Growth.advance` sets the stage on G, D and G_ema and the learning rates; it
tells the engine when the trained parameter set changed (re-wrap DDP) and when the per-worker
batch changed (re-open the data stream).

Why re-wrap DDP instead of find_unused_parameters: DDP fixes its parameter set when it is built,
and the set changes only twice per level (the fade-in starts, the fade-in ends). Re-wrapping then
costs one broadcast of the weights; find_unused_parameters would walk the autograd graph on every
backward, and it searches from the output of the last forward only, while a D step runs D three
times before its backward (reals, fakes, and the gradient penalty's double-backward pass).
"""
from __future__ import annotations

from typing import Sequence

import torch

from models.progan import ProGANConfig, Stage, progan_reals, progan_schedule
from pipeline.families import register
from pipeline.families.gan import DirectGAN
from pipeline.families.spec import Change


class Growth:
    """Stage bookkeeping for one rank. `nets` are the unwrapped G, D and the frozen G_ema."""

    def __init__(self, cfg, nets: Sequence[torch.nn.Module], opts: Sequence[torch.optim.Optimizer]):
        self.model, self.default_batch = cfg.model, cfg.train.batch_size
        self.default_lr = {id(o): [g["lr"] for g in o.param_groups] for o in opts}
        self.nets, self.opts = list(nets), list(opts)
        self.stage: Stage | None = None

    @property
    def batch_size(self) -> int:
        """Per-worker batch of the current stage."""
        return self.stage.batch_size or self.default_batch

    def advance(self, images_seen: int) -> tuple[bool, bool]:
        """Enter the stage for `images_seen`. -> (trained parameters changed, batch size changed)."""
        old = self.stage
        self.stage = s = progan_schedule(self.model, images_seen)
        changed = False
        for net in self.nets:
            changed |= net.set_stage(s.level, s.alpha)
        if changed:
            # The official code resets Adam whenever the trained layers change
            # (reset_opt_for_new_lod): moments of a half-faded layer mislead the next phase.
            # Also right after a resume that crosses a boundary, as the unbroken run would.
            for opt in self.opts:
                opt.state.clear()
        if old is None or s.lr != old.lr:
            for opt in self.opts:
                for g, lr in zip(opt.param_groups, self.default_lr[id(opt)]):
                    g["lr"] = s.lr if s.lr is not None else lr
        return changed, old is not None and s.batch_size != old.batch_size

    def reals(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution reals from the shards -> the stage's resolution, blended in a fade-in."""
        return progan_reals(x, self.stage.level, self.stage.alpha)

    def metrics(self) -> dict[str, float]:
        s = self.stage
        return {"level": s.level, "alpha": s.alpha, "resolution": s.resolution}


@register("progan", ProGANConfig)
class ProGAN(DirectGAN):
    """Progressive growing from 4x4 with fade-in; reals downsampled to the stage on the fly."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.growth: Growth | None = None

    def on_progress(self, images_seen, nets, emas, opts):
        if self.growth is None:
            self.growth = Growth(self.cfg, (nets["G"], nets["D"], emas["G"]), (opts["G"], opts["D"]))
        old = self.growth.stage
        rewrap, rebatch = self.growth.advance(images_seen)
        if old is None or rewrap or rebatch:
            return Change(rewrap=rewrap, batch_size=self.growth.batch_size if rebatch else None)
        return None

    def batch_size(self) -> int:
        return self.growth.batch_size if self.growth else self.cfg.train.batch_size

    def reals(self, batch):
        return self.growth.reals(batch["image"]) if self.growth else batch["image"]

    def metrics(self):
        return {**(self.growth.metrics() if self.growth and self.growth.stage else {}), **super().metrics()}
