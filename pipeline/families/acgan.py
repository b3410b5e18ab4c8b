"""ACGAN (Odena et al. 2017): G(z, c) and a D with an auxiliary classifier head on its body.

D judges real vs fake and names the class of both; G is rewarded when D names the class it was
asked for. The shapestack oracle's class accuracy (eval metric `coverage`, key oracle_accuracy)
says whether the generated image shows the requested glyph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models import dcgan
from pipeline.engine import losses
from pipeline.families import register
from pipeline.families.gan import DirectGAN


@dataclass(frozen=True, kw_only=True)
class ACGANConfig(dcgan.DCGANConfig):
    num_classes: int = 10         # classes G is conditioned on and D's head predicts (>= 2)
    aux_weight: float = 1.0       # weight of the classification loss, in D's and G's loss (>= 0)

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes < 2:
            raise ValueError("num_classes: ACGAN needs >= 2 classes")
        if self.aux_weight < 0:
            raise ValueError("aux_weight: must be >= 0")


@register("acgan", ACGANConfig)
class ACGAN(DirectGAN):
    per_sample_d = True

    def build(self):
        # D(x, head=True) -> (real/fake logit, class logits) from one body
        return {"G": dcgan.Generator(self.model), "D": dcgan.HeadedDiscriminator(self.model, self.model.num_classes)}

    def _loss_D(self, nets, batch, ctx):
        G, D, w = nets["G"], nets["D"], self.model.aux_weight
        real, y = batch["image"], batch["cls"]
        with torch.no_grad(), ctx.amp():
            fake = G(self.z(real.shape[0], real.device), y)
        with ctx.amp():
            real_logit, real_cls = (t.float() for t in D(self.augment(real), head=True))
            fake_logit, fake_cls = (t.float() for t in D(self.augment(fake), head=True))
            adv = losses.d_loss(self.cfg.loss.kind, real_logit, fake_logit)
            aux = F.cross_entropy(real_cls, y) + F.cross_entropy(fake_cls, y)
        acc = (real_cls.argmax(1) == y).float().mean()
        stats = {"loss_d": adv.detach(), "aux_d": aux.detach(), "d_real_class_acc": acc.detach(),
                 "d_real": real_logit.mean().detach(), "d_fake": fake_logit.mean().detach(),
                 **self.ada_stat(real_logit)}
        return adv + w * aux, stats

    def _loss_G(self, nets, batch, ctx):
        G, D, w = nets["G"], nets["D"], self.model.aux_weight
        y = batch["cls"]
        with ctx.amp():
            logit, cls = (t.float() for t in D(self.augment(G(self.z(len(y), ctx.device), y)), head=True))
            adv = losses.g_loss(self.cfg.loss.kind, logit)
            aux = F.cross_entropy(cls, y)
        return adv + w * aux, {"loss_g": adv.detach(), "aux_g": aux.detach()}
