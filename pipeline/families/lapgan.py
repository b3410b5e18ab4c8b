"""LAPGAN (Denton et al. 2015): coarse-to-fine generation through a Laplacian pyramid.

Training follows the paper: every stage learns on the real pyramid, stage k >= 1 adding a
residual to the real image of the scale below (upsampled) and judged against the real image at
its scale given that same coarse image; stage 0 is a plain GAN at `model.base` px. The stages
are therefore independent, and they train together: one D phase and one G phase per step, each
the sum of the stages' losses (loss.kind), each stage's gradient its own. Sampling chains them:
stage 0's image, upsampled, is what stage 1 refines, and so on; the sample is the last stage's.
The training grid shows every stage of each sample, left to right. Inputs: z for stage 0, and a
noise plane per finer stage (n1, n2, ...: flattened [noise_channels, R, R]).
"""
from __future__ import annotations

import torch

from models.lapgan import Discriminator, Generator, LAPGANConfig, pyramid, up
from pipeline.data.fields import Image
from pipeline.engine import losses
from pipeline.families import register
from pipeline.families.spec import Latent, StagedFamily


@register("lapgan", LAPGANConfig)
class LAPGAN(StagedFamily):
    @property
    def fields(self):
        return {"image": Image()}

    def inputs(self):
        m = self.model
        return {"z": Latent(m.z_dim),
                **{f"n{k}": Latent(m.noise_channels * r * r) for k, r in enumerate(m.sizes[1:], 1)}}

    def build(self):
        return {"G": Generator(self.model), "D": Discriminator(self.model)}

    def _noises(self, x: dict) -> list[torch.Tensor]:
        m = self.model
        return [x[f"n{k}"].view(-1, m.noise_channels, r, r) for k, r in enumerate(m.sizes[1:], 1)]

    def stages(self, nets, inputs) -> list[torch.Tensor]:
        """Every stage's image of the given inputs, coarse to fine."""
        return nets["G"](inputs["z"], self._noises(inputs))

    def generate(self, nets, inputs):
        return self.stages(nets, inputs)[-1]

    def grid(self, nets, n, seed, batch):
        """A row per sample: each stage's image, upsampled (nearest) to the full size."""
        from pipeline.families import sampling

        rows = max(1, n // len(self.model.sizes))
        x = {k: v.to(next(nets["G"].parameters()).device)
             for k, v in sampling.inputs(self.inputs(), 0, rows, seed=seed).items()}
        was = nets["G"].training
        nets["G"].eval()
        with torch.no_grad():
            out = self.stages(nets, x)
        nets["G"].train(was)
        r = self.model.resolution
        full = [torch.nn.functional.interpolate(s.float(), size=(r, r), mode="nearest") for s in out]
        return torch.stack(full, 1).flatten(0, 1), len(full)

    # -- losses --------------------------------------------------------------------------------
    def _batch(self, batch, device):
        real = pyramid(batch["image"], self.model.sizes)
        coarse = [up(p) for p in real[:-1]]          # l_k: the real image of the scale below
        x = self.draw(real[-1].shape[0], device)
        return real, coarse, x

    def loss(self, phase, nets, batch, ctx):
        G, D, kind = nets["G"], nets["D"], self.cfg.loss.kind
        real, coarse, x = self._batch(batch, ctx.device)
        if phase.name == "D":
            with torch.no_grad(), ctx.amp():
                fake = G(x["z"], self._noises(x), coarse)
            with ctx.amp():
                lr, lf = D(real, coarse), D([f.detach() for f in fake], coarse)
            per = [losses.d_loss(kind, a.float(), b.float()) for a, b in zip(lr, lf)]
            stats = {"loss_d": sum(per).detach(), "d_real": lr[-1].float().mean().detach(),
                     "d_fake": lf[-1].float().mean().detach(),
                     **{f"loss_d{k}": v.detach() for k, v in enumerate(per)}}
            return sum(per), stats
        with ctx.amp():
            lf = D(G(x["z"], self._noises(x), coarse), coarse)
        per = [losses.g_loss(kind, a.float()) for a in lf]
        return sum(per), {"loss_g": sum(per).detach(), **{f"loss_g{k}": v.detach() for k, v in enumerate(per)}}
