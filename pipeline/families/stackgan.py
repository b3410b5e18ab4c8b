"""StackGAN: stage I sketches at half size, stage II refines to the final size (models/stackgan.py).

Trained end to end as StackGAN++ does: one D phase (each stage's D on real images at its scale,
the real batch downsampled for stage I, against that stage's fakes) and one G phase (both stages'
adversarial losses, summed, plus `model.kl_weight` x the conditioning augmentation's KL), so
stage II's gradient also reaches stage I. Generation inputs: z, CA's eps (a Latent, so a seed
fixes the augmented condition too) and the class. Grids show stage I beside stage II.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.stackgan import Discriminator, Generator, StackGANConfig
from pipeline.engine import losses
from pipeline.families import register
from pipeline.families.spec import ClassLabel, Latent, StagedFamily


@register("stackgan", StackGANConfig)
class StackGAN(StagedFamily):
    def inputs(self):
        m = self.model
        return {"z": Latent(m.z_dim), "eps": Latent(m.c_dim), "cls": ClassLabel(m.num_classes)}

    def build(self):
        return {"G": Generator(self.model), "D": Discriminator(self.model)}

    def stages(self, nets, inputs) -> list[torch.Tensor]:
        return nets["G"](inputs["z"], inputs["eps"], inputs["cls"])[0]

    def generate(self, nets, inputs):
        return self.stages(nets, inputs)[-1]

    def grid(self, nets, n, seed, batch):
        """A row per sample: stage I (upsampled, nearest) beside stage II."""
        from pipeline.families import sampling

        rows = max(1, n // 2)
        dev = next(nets["G"].parameters()).device
        x = {k: v.to(dev) for k, v in sampling.inputs(self.inputs(), 0, rows, seed=seed).items()}
        was = nets["G"].training
        nets["G"].eval()
        with torch.no_grad():
            low, high = self.stages(nets, x)
        nets["G"].train(was)
        low = F.interpolate(low.float(), size=high.shape[-2:], mode="nearest")
        return torch.stack([low, high.float()], 1).flatten(0, 1), 2

    def loss(self, phase, nets, batch, ctx):
        G, D, kind = nets["G"], nets["D"], self.cfg.loss.kind
        real, y = batch["image"], batch["cls"]
        reals = [F.avg_pool2d(real, 2), real]
        x = self.draw(real.shape[0], ctx.device)
        if phase.name == "D":
            with torch.no_grad(), ctx.amp():
                fakes, _ = G(x["z"], x["eps"], y)
            with ctx.amp():
                lr, lf = D(reals, y), D(fakes, y)
            per = [losses.d_loss(kind, a.float(), b.float()) for a, b in zip(lr, lf)]
            return sum(per), {"loss_d": sum(per).detach(), "d_real": lr[-1].float().mean().detach(),
                              "d_fake": lf[-1].float().mean().detach(),
                              **{f"loss_d{k + 1}": v.detach() for k, v in enumerate(per)}}
        with ctx.amp():
            fakes, kl = G(x["z"], x["eps"], y)
            lf = D(fakes, y)
        per = [losses.g_loss(kind, a.float()) for a in lf]
        kl = kl.mean()
        return sum(per) + self.model.kl_weight * kl, {
            "loss_g": sum(per).detach(), "kl": kl.detach(), **{f"loss_g{k + 1}": v.detach() for k, v in enumerate(per)}}
