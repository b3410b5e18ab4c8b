"""pix2pix (Isola et al. 2017): supervised translation on paired samples.

Each sample holds a source and a target image (members source.png + target.png by default,
`model.source` / `model.target` name other prefixes; `ganforge shards --pairs` writes them). G is a
U-Net, D a conditional PatchGAN that sees (source, image) pairs. D: the adversarial loss
(loss.kind; the paper's is nonsaturating) on (x, y) against (x, G(x)). G: the adversarial loss plus
model.l1_weight * |G(x) - y|_1 (the paper's 100), which carries most of the signal early on.
G runs in eval mode when sampling, so the same input gives the same output (the paper keeps
dropout at test time for diversity; this U-Net has no dropout).
"""
from __future__ import annotations

import torch

from models import pix2pix
from models.pix2pix import Pix2PixConfig
from pipeline.engine import losses
from pipeline.families import register
from pipeline.families.spec import Phase, SourceImage
from pipeline.families.translation import Translator, image_field


@register("pix2pix", Pix2PixConfig)
class Pix2Pix(Translator):
    # what a study ranks by without in-loop evaluation
    objectives = {"l1": "min", "d_gap": "min"}
    proxy = "l1"

    @property
    def fields(self):
        return {"source": image_field(self.model.source), "target": image_field(self.model.target)}

    def inputs(self):
        return {"image": SourceImage(self.model.resolution)}

    def build(self):
        return pix2pix.build(self.model)

    def phases(self):
        return [Phase("D", "D"), Phase("G", "G", new_batch=False)]

    def source(self, batch):
        return batch["source"]

    def grid_target(self, batch, n):
        return batch["target"][:n]

    def generate(self, nets, inputs):
        return nets["G"](inputs["image"])

    def loss(self, phase, nets, batch, ctx):
        G, D, kind = nets["G"], nets["D"], self.cfg.loss.kind
        x, y = batch["source"], batch["target"]
        if phase.name == "D":
            with torch.no_grad(), ctx.amp():
                fake = G(x)
            with ctx.amp():
                real_logits, fake_logits = D(x, y).float(), D(x, fake).float()
            loss = losses.d_loss(kind, real_logits, fake_logits)
            return loss, {"loss_d": loss.detach(), "d_real": real_logits.mean().detach(),
                          "d_fake": fake_logits.mean().detach()}
        with ctx.amp():
            fake = G(x)
            adv = losses.g_loss(kind, D(x, fake).float())
        l1 = (fake.float() - y).abs().mean()
        return adv + self.model.l1_weight * l1, {"loss_g": adv.detach(), "l1": l1.detach()}
