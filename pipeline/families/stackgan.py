"""StackGAN: stage I sketches at half size, stage II refines to the final size (models/stackgan.py).

Trained end to end as StackGAN++ does: one D phase (each stage's D on real images at its scale,
the real batch downsampled for stage I, against that stage's fakes) and one G phase (both stages'
adversarial losses, summed, plus `model.kl_weight` x the conditioning augmentation's KL), so
stage II's gradient also reaches stage I. Generation inputs: z, CA's eps (a Latent, so a seed
fixes the augmented condition too) and the class, or the caption (`model.condition: text`). With
a caption, D is matching-aware as in the paper (GAN-INT-CLS's: real images with another sample's
caption count as fake) and the text encoder is GAN-INT-CLS's (pipeline/families/textgan.py).
Grids show stage I beside stage II.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.stackgan import Discriminator, Generator, StackGANConfig
from pipeline.data.fields import Image, Label
from pipeline.engine import losses
from pipeline.families import register
from pipeline.families.spec import ClassLabel, Latent, StagedFamily
from pipeline.families.textgan import TextCondition


@register("stackgan", StackGANConfig)
class StackGAN(StagedFamily):
    @property
    def text(self) -> TextCondition | None:
        return TextCondition(self.model) if self.model.condition == "text" else None

    @property
    def key(self) -> str:
        """The condition's field and input: cls or txt."""
        return "txt" if self.text else "cls"

    @property
    def fields(self):
        return {"image": Image(), self.key: self.text.field() if self.text else Label()}

    @property
    def sample_nets(self):
        return self.text.with_encoder(("G",)) if self.text else ("G",)

    def inputs(self):
        m = self.model
        return {"z": Latent(m.z_dim), "eps": Latent(m.c_dim),
                self.key: self.text.input() if self.text else ClassLabel(m.num_classes)}

    def build(self):
        return {"G": Generator(self.model), "D": Discriminator(self.model), **(self.text.build() if self.text else {})}

    def optimizer_groups(self):
        out = super().optimizer_groups()
        if self.text:
            out["D"] = (self.text.with_encoder(out["D"][0]), out["D"][1])
        return out

    def check_fixed(self, nets, fixed):
        if self.text:
            self.text.check(nets, fixed.get("txt"), "txt")

    def condition(self, nets, inputs) -> torch.Tensor:
        return self.text.embed(nets, inputs["txt"]) if self.text else inputs["cls"]

    def stages(self, nets, inputs) -> list[torch.Tensor]:
        return nets["G"](inputs["z"], inputs["eps"], self.condition(nets, inputs))[0]

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
        real = batch["image"]
        y = (self.text.of_batch(nets, batch["txt"], ctx.device, grad=phase.name == "D") if self.text
             else batch["cls"])
        reals = [F.avg_pool2d(real, 2), real]
        x = self.draw(real.shape[0], ctx.device)
        if phase.name == "D":
            with torch.no_grad(), ctx.amp():
                fakes, _ = G(x["z"], x["eps"], y.detach() if self.text else y)
            with ctx.amp():
                lr, lf = D(reals, y), D(fakes, y)
                neg = lf
                if self.text:   # matching-aware: reals with a rolled caption are fakes too (averaged)
                    neg = [torch.cat([f, w]) for f, w in zip(lf, D(reals, y.roll(1, 0)))]
            per = [losses.d_loss(kind, a.float(), b.float()) for a, b in zip(lr, neg)]
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
